"""Lock hand-off between the shards one worker runs in two threads.

A worker encodes shard ``k+1`` while shard ``k`` commits (I/O, e.g. an upload to S3), but
never runs two encodes at once: each shard holds a shared compute lock while it reads and
encodes, and hands it off before its commit. The holder below makes that hand-off happen
exactly once, however the encoding generator ends (finished, raised, or closed early).
"""

from __future__ import annotations

import threading


class HeldLock:
    """The lock a generator holds (until ``release``, once), if any."""

    lock: threading.Lock | None = None

    def acquire(self, lock: threading.Lock | None) -> None:
        if lock is not None:
            lock.acquire()
            self.lock = lock

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
