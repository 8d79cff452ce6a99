"""The job driver's retry policy (jobs/driver.py), without Ray processes: actors are
scripted, ``ray.wait``/``ray.get`` are replaced by a fake that plays their scripts, and the
clock is virtual, so restarts that take minutes run in milliseconds."""

from __future__ import annotations

import types
from collections import deque
from typing import Any

import pytest
import ray.exceptions as rex

import jobs.driver as driver
from jobs.progress import Counters, ProgressBar


def unavailable() -> Exception:
    return rex.ActorUnavailableError("The actor is restarting.", None)


class FakeActor:
    """Each submitted task gets the next script from ``scripts`` (a list of events and
    exceptions) or, when they run out, a clean run: one progress event, then done."""

    def __init__(self, scripts: list[list[Any]] | None = None) -> None:
        self.scripts = deque(scripts or [])
        self.tasks: list[Any] = []


class FakeGen:
    def __init__(self, actor: FakeActor, task: Any) -> None:
        actor.tasks.append(task)
        script = actor.scripts.popleft() if actor.scripts else None
        if script is None:
            script = [{"type": "progress", "images": 1, "ok": 1},
                      {"type": "done", "task": task}]
        self.items = deque(script)

    def __next__(self) -> Any:
        if not self.items:
            raise StopIteration
        return self.items.popleft()


class FakeRay:
    """Stands in for the ``ray`` module inside jobs.driver; time passes only when the
    driver waits or sleeps."""

    exceptions = rex

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def wait(self, gens: list[FakeGen], num_returns: int, timeout: float):
        self.now += 0.01
        return gens[:1], gens[1:]

    @staticmethod
    def get(item: Any) -> Any:
        if isinstance(item, BaseException):
            raise item
        return item


@pytest.fixture
def fake(monkeypatch) -> FakeRay:
    f = FakeRay()
    monkeypatch.setattr(driver, "ray", f)
    monkeypatch.setattr(driver, "time", types.SimpleNamespace(
        sleep=lambda s: setattr(f, "now", f.now + s), monotonic=f.clock))
    return f


def run(fake: FakeRay, actors: list[FakeActor], tasks: list[Any], **kw) -> driver.DriveResult:
    counters = Counters(len(tasks))
    res = driver.drive(actors, tasks, FakeGen, counters=counters,
                       bar=ProgressBar(counters, "test", False), clock=fake.clock, **kw)
    res.counters = counters  # type: ignore[attr-defined]
    return res


def test_restarting_actor_costs_no_attempt(fake: FakeRay):
    """The regression: a killed actor takes minutes to restart on a starved machine; its
    re-queued task must wait for it, not use up its attempts on instant refusals."""
    kill = [{"type": "progress", "images": 1, "ok": 1}, unavailable()]
    refusals = [[unavailable()] for _ in range(3 * driver.MAX_BOUNCES)]
    actor = FakeActor([kill, *refusals])
    res = run(fake, [actor], ["a", "b"], attempts=2, inflight=1)
    assert res.failed == []
    assert sorted(ev["task"] for ev in res.done) == ["a", "b"]
    assert res.retries == 1  # only the attempt that was running when the actor died
    assert res.counters.images == 2 and res.counters.ok == 2  # the lost progress undone
    # the refusals were spread out by the back-off, not spun through
    assert fake.now > sum(min(driver.BACKOFF_S[1], driver.BACKOFF_S[0] * 2 ** k)
                          for k in range(len(refusals))) * 0.9


def test_other_actors_keep_working_while_one_restarts(fake: FakeRay):
    sick = FakeActor([[unavailable()] for _ in range(50)])
    healthy = FakeActor()
    res = run(fake, [sick, healthy], list(range(6)), inflight=1)
    assert res.failed == [] and len(res.done) == 6
    assert len(healthy.tasks) == 6 and all(ev["attempt"] == 1 for ev in res.done)


def test_task_that_keeps_killing_its_actor_fails_after_its_attempts(fake: FakeRay):
    crash = [{"type": "progress", "images": 1}, unavailable()]
    actor = FakeActor([list(crash) for _ in range(5)])
    res = run(fake, [actor], ["x"], attempts=3, inflight=1)
    assert res.done == [] and res.retries == 2
    (task, n, err), = res.failed
    assert task == "x" and n == 3 and err.startswith("ActorUnavailableError")
    assert res.counters.images == 0


def test_pool_that_never_comes_back_fails_in_bounded_time(fake: FakeRay):
    actor = FakeActor([[unavailable()] for _ in range(10_000)])
    res = run(fake, [actor], ["x"], inflight=1)
    (task, n, err), = res.failed
    assert task == "x" and n == 1 and "unavailable" in err
    assert driver.UNAVAILABLE_LIMIT_S <= fake.now < driver.UNAVAILABLE_LIMIT_S + 60


def test_dead_actor_bystanders_bounce_a_bounded_number_of_times(fake: FakeRay):
    """An actor whose constructor fails loses every task before it starts."""
    actor = FakeActor([[rex.ActorDiedError()] for _ in range(100)])
    res = run(fake, [actor], ["x"], inflight=1)
    (task, n, err), = res.failed
    # ten free bounces, then its three attempts
    assert task == "x" and n == 3 and len(actor.tasks) == driver.MAX_BOUNCES + 3


def test_on_retry_adjusts_requeued_tasks(fake: FakeRay):
    actor = FakeActor([[{"type": "progress", "images": 1}, unavailable()]])
    res = run(fake, [actor], ["s"], inflight=1, on_retry=lambda t: t + "+takeover")
    assert actor.tasks == ["s", "s+takeover"]
    assert res.done[0]["attempt"] == 2
