"""The driver loop shared by the Ray jobs: hand tasks to an actor pool, follow each task's
stream of progress events, re-queue attempts lost to actor deaths.

Each task runs as a streaming-generator actor method: it yields ``{"type": "progress"}``
events while it works and one final ``{"type": "done"|"shard"}`` event. ``ray.wait`` on the
generators wakes the driver whenever any actor has news, so the progress bar moves per
batch, not per task. At most ``inflight`` tasks are queued per actor (backpressure).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from jobs.progress import Counters, ProgressBar
from storage import ArchiveError, CorruptArchiveError

COUNTED = ("images", "ok", "failed", "bytes_in", "bytes_out", "pixels")
RAY_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.RayTaskError,
              ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)


def short_error(e: BaseException) -> str:
    """One line for a summary out of a Ray error (whose str() is a whole traceback)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip()
        return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def retryable(e: BaseException) -> bool:
    """Actor deaths and transient errors are retried; storage refusals are not."""
    cause = getattr(e, "cause", None)
    return not (isinstance(cause, ArchiveError) and not isinstance(cause, CorruptArchiveError))


MAX_BOUNCES = 10  # re-queues of a task that was lost before it started (see drive)


@dataclass
class _Attempt:
    task: Any
    actor: int
    attempt: int
    bounces: int = 0
    seen: dict[str, int] = field(default_factory=dict)


@dataclass
class DriveResult:
    done: list[dict[str, Any]] = field(default_factory=list)  # final events (+ "attempt")
    failed: list[tuple[Any, int, str]] = field(default_factory=list)  # (task, attempts, error)
    retries: int = 0
    nodes: set[str] = field(default_factory=set)


def drive(actors: list[Any], tasks: list[Any], submit: Callable[[Any, Any], Any], *,
          counters: Counters, bar: ProgressBar, attempts: int = 3, inflight: int = 2,
          on_retry: Callable[[Any], Any] = lambda t: t,
          on_event: Callable[[dict[str, Any]], None] | None = None) -> DriveResult:
    """Run every task on the pool; ``submit(actor, task)`` returns an ObjectRefGenerator.

    A task whose attempt dies (actor crash) or raises a retryable error is re-queued up to
    ``attempts`` times in all (``on_retry(task)`` may adjust it, e.g. to take over a
    claim); what it had reported is subtracted from ``counters``. A task that was only
    queued behind the one that killed its actor (it reported nothing) is re-queued without
    using an attempt, at most ``MAX_BOUNCES`` times (an actor whose constructor fails
    loses every task before it starts).
    """
    res = DriveResult()
    queue: deque[tuple[Any, int, int]] = deque((t, 1, 0) for t in tasks)
    running: dict[Any, _Attempt] = {}
    load = [0] * len(actors)

    def dispatch() -> None:
        while queue:
            i = min(range(len(actors)), key=load.__getitem__)
            if load[i] >= max(1, inflight):
                return
            task, n, bounces = queue.popleft()
            running[submit(actors[i], task)] = _Attempt(task, i, n, bounces)
            load[i] += 1

    def finish(gen: Any) -> _Attempt:
        att = running.pop(gen)
        load[att.actor] -= 1
        return att

    dispatch()
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for gen in ready:
            att = running[gen]
            try:
                ev = ray.get(next(gen))
            except StopIteration:
                finish(gen)
                continue
            except RAY_ERRORS as e:
                finish(gen)
                counters.subtract(att.seen)
                bystander = (not att.seen and isinstance(e, ray.exceptions.RayActorError)
                             and att.bounces < MAX_BOUNCES)
                if bystander:
                    queue.appendleft((on_retry(att.task), att.attempt, att.bounces + 1))
                elif retryable(e) and att.attempt < attempts:
                    res.retries += 1
                    queue.appendleft((on_retry(att.task), att.attempt + 1, att.bounces))
                else:
                    res.failed.append((att.task, att.attempt, short_error(e)))
                continue
            if on_event is not None:
                on_event(ev)
            if ev.get("type") == "progress":
                for k in COUNTED:
                    att.seen[k] = att.seen.get(k, 0) + ev.get(k, 0)
                counters.add(ev)
            else:
                res.done.append({**ev, "attempt": att.attempt})
                if ev.get("node"):
                    res.nodes.add(ev["node"])
        dispatch()
        bar.refresh()
    return res
