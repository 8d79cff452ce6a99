"""Claim staleness: is the writer that claimed a shard dead?

``storage`` records who claims a shard (host, pid, time) but cannot know whether that
writer still lives; a job deciding whether to take a shard over (``takeover=True``) needs
that judgement, and it is a policy, so it lives here rather than in ``storage``.
"""

from __future__ import annotations

import calendar
import os
import socket
import time
from collections.abc import Mapping
from typing import Any


def claim_is_stale(claim: Mapping[str, Any], *, stale_after_s: float,
                   now: float | None = None) -> bool:
    """Whether a shard claim was left by a dead writer.

    Encoders claim a shard only for its commit (they encode first, then write in one
    piece), so a claim is held for seconds. It is stale when its process is gone (same
    host) or it is older than ``stale_after_s``.
    """
    if claim.get("host") == socket.gethostname() and isinstance(claim.get("pid"), int):
        try:
            os.kill(claim["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    at = claim.get("claimed_at")
    try:
        t = calendar.timegm(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return True  # unreadable claim: nobody can be relying on it
    return (now if now is not None else time.time()) - t > stale_after_s
