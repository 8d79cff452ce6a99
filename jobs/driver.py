"""The driver loop shared by the Ray jobs: hand tasks to an actor pool, follow each task's
stream of progress events, re-queue attempts lost to actor deaths.

Each task runs as a streaming-generator actor method: it yields ``{"type": "progress"}``
events while it works and one final ``{"type": "done"|"shard"}`` event. ``ray.wait`` on the
generators wakes the driver whenever any actor has news, so the progress bar moves per
batch, not per task. At most ``inflight`` tasks are queued per actor (backpressure).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
UNAVAILABLE_LIMIT_S = 600.0  # how long a task may wait for a restarting actor pool
BACKOFF_S = (0.5, 8.0)  # first and longest pause before retrying an unavailable actor


@dataclass
class _Attempt:
    task: Any
    actor: int
    attempt: int
    bounces: int = 0
    waiting_since: float | None = None  # first time this task found its actor restarting
    seen: dict[str, int] = field(default_factory=dict)


@dataclass
class DriveResult:
    done: list[dict[str, Any]] = field(default_factory=list)  # final events (+ "attempt")
    failed: list[tuple[Any, int, str]] = field(default_factory=list)  # (task, attempts, error)
    retries: int = 0
    nodes: set[str] = field(default_factory=set)


class _Pool:
    """Which actor gets the next task: the least loaded one that is not cooling down.

    An actor that answered "unavailable" (Ray is restarting it) cools down for a pause that
    doubles with each further refusal (``BACKOFF_S``) and resets on its first event, so a
    restart that takes minutes on a starved machine does not burn the queue in a tight
    loop of instant refusals.
    """

    def __init__(self, n: int, inflight: int) -> None:
        self.load = [0] * n
        self.cap = max(1, inflight)
        self.cool_until = [0.0] * n
        self.streak = [0] * n

    def pick(self, now: float) -> int | None:
        free = [i for i in range(len(self.load))
                if self.load[i] < self.cap and self.cool_until[i] <= now]
        return min(free, key=self.load.__getitem__) if free else None

    def unavailable(self, i: int, now: float) -> None:
        first, longest = BACKOFF_S
        self.cool_until[i] = now + min(longest, first * 2 ** self.streak[i])
        self.streak[i] += 1

    def alive(self, i: int) -> None:
        self.streak[i] = 0
        self.cool_until[i] = 0.0

    def next_wakeup(self, now: float) -> float:
        return max(0.0, min(self.cool_until) - now)


def _after_loss(att: _Attempt, e: BaseException, res: DriveResult, pool: _Pool,
                requeue: Callable[..., None], attempts: int, now: float) -> None:
    """What becomes of an attempt that ended in a Ray error (the policy :func:`drive`
    describes): re-queued for free, re-queued as its next attempt, or failed."""
    if isinstance(e, ray.exceptions.ActorUnavailableError):
        pool.unavailable(att.actor, now)
        since = att.waiting_since if att.waiting_since is not None else now
        if now - since >= UNAVAILABLE_LIMIT_S:  # the pool is not coming back
            res.failed.append((att.task, att.attempt, short_error(e)))
            return
        if not att.seen:
            requeue(att, waiting_since=since)
            return
    elif (not att.seen and isinstance(e, ray.exceptions.RayActorError)
          and att.bounces < MAX_BOUNCES):
        requeue(att, bounces=att.bounces + 1)
        return
    if retryable(e) and att.attempt < attempts:
        res.retries += 1
        requeue(att, attempt=att.attempt + 1)
    else:
        res.failed.append((att.task, att.attempt, short_error(e)))


def drive(actors: list[Any], tasks: list[Any], submit: Callable[[Any, Any], Any], *,
          counters: Counters, bar: ProgressBar, attempts: int = 3, inflight: int = 2,
          on_retry: Callable[[Any], Any] = lambda t: t,
          on_event: Callable[[dict[str, Any]], None] | None = None,
          clock: Callable[[], float] = time.monotonic) -> DriveResult:
    """Run every task on the pool; ``submit(actor, task)`` returns an ObjectRefGenerator.

    What an attempt that ends in a Ray error costs (what it had reported is always
    subtracted from ``counters`` and ``on_retry(task)`` may adjust the re-queued task, e.g.
    to take over a claim):

    * it had reported progress (it was running when its actor died, or it raised a
      retryable error): one of its ``attempts``; a task that keeps killing its actor fails;
    * it reported nothing and its actor is *restarting* (``ActorUnavailableError``):
      nothing; the actor cools down (see :class:`_Pool`) and the task goes back to the
      queue; after ``UNAVAILABLE_LIMIT_S`` of such waiting the task fails;
    * it reported nothing and its actor is gone (queued behind the task that killed it,
      or the actor's constructor fails): nothing, at most ``MAX_BOUNCES`` times.
    """
    res = DriveResult()
    queue: deque[_Attempt] = deque(_Attempt(t, -1, 1) for t in tasks)
    running: dict[Any, _Attempt] = {}
    pool = _Pool(len(actors), inflight)

    def dispatch() -> None:
        while queue:
            i = pool.pick(clock())
            if i is None:
                return
            att = queue.popleft()
            att.actor = i
            running[submit(actors[i], att.task)] = att
            pool.load[i] += 1

    def requeue(att: _Attempt, **changes: Any) -> None:
        queue.appendleft(replace(att, task=on_retry(att.task), actor=-1, seen={}, **changes))

    def lost(att: _Attempt, e: BaseException) -> None:
        counters.subtract(att.seen)
        _after_loss(att, e, res, pool, requeue, attempts, clock())

    dispatch()
    while running or queue:
        if not running:  # every actor is cooling down
            time.sleep(min(1.0, pool.next_wakeup(clock())) or 0.05)
            dispatch()
            continue
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for gen in ready:
            att = running[gen]
            try:
                ev = ray.get(next(gen))
            except StopIteration:
                running.pop(gen)
                pool.load[att.actor] -= 1
                continue
            except RAY_ERRORS as e:
                running.pop(gen)
                pool.load[att.actor] -= 1
                lost(att, e)
                continue
            pool.alive(att.actor)
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
