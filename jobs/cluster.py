"""Start or join Ray for a job: an embedded local Ray by default, a cluster with ``address``.

The embedded Ray is quiet and local: no dashboard, usage stats off, every listener on
127.0.0.1, a small object store (jobs move file names and progress counters through Ray,
never pixels), and it stops with the job. ``address`` joins a running cluster (``ray start
--head`` or a ``ray://`` client address) and only disconnects at the end. If Ray is
already initialised in this process (tests, notebooks), that session is used as it is and
left running.

Loopback: on Linux, Ray resolves "this node" to the host's outward IP address, even when
told ``_node_ip_address="127.0.0.1"``, and rewrites a ``127.0.0.1:port`` address to that IP
before connecting. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the local-only mode Ray uses on
laptops) makes it use 127.0.0.1 throughout. Ray reads that variable once, when it is first
imported, so :func:`use_loopback` sets it *and* the constant Ray derived from it; the
embedded Ray and joins of a loopback address use it, joins of real cluster addresses don't.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def quiet_env() -> None:
    """Set Ray's environment defaults (before ``ray.init``); explicit settings win."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def use_loopback() -> None:
    """Keep Ray's node address (and so its listeners) on 127.0.0.1; see the module doc.

    Sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` for this process and the Ray processes it
    starts, and, if ``ray`` was already imported, the constant it read from it.
    """
    os.environ[LOOPBACK_ENV] = "0"
    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None:
        consts.ENABLE_RAY_CLUSTER = False


def is_loopback_address(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


@dataclass
class Session:
    mode: str  # "embedded", "joined" or "existing"
    address: str
    resources: dict[str, float]

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0))

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0))


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                num_gpus: int | None = None,
                object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES) -> Iterator[Session]:
    """Use, join or start Ray for the duration of a ``with`` block (see module doc)."""
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        yield Session("existing", getattr(ctx, "gcs_address", "") or "", ray.cluster_resources())
        return
    quiet_env()
    if not address or is_loopback_address(address):
        use_loopback()
    kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                          "configure_logging": True}
    if address:
        ctx = ray.init(address=address, **kw)
        mode = "joined"
    else:
        # Ray enables token auth by default and says so at every start; keep the default
        # (the token lives in ~/.ray/auth_token), drop the notice.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
        # address="local": always a new Ray of our own, never a cluster that RAY_ADDRESS
        # (or /tmp/ray/ray_current_cluster) happens to name.
        ctx = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                       include_dashboard=False, object_store_memory=object_store_bytes,
                       _node_ip_address=LOOPBACK, **kw)
        mode = "embedded"
    try:
        yield Session(mode, getattr(ctx, "address_info", {}).get("gcs_address", address or ""),
                      ray.cluster_resources())
    finally:
        ray.shutdown()


def actor_layout(session: Session, *, actors: int | None, cpus_per_actor: float,
                 gpus_per_actor: float | None) -> tuple[int, float, float]:
    """How many actors and what each reserves: one per GPU where Ray sees GPUs (unless
    ``gpus_per_actor=0``), else ``CPUs // cpus_per_actor``; ``actors`` overrides the count."""
    gpus = session.gpus if gpus_per_actor is None else gpus_per_actor
    per_gpu = (1.0 if gpus_per_actor is None else float(gpus_per_actor)) if gpus else 0.0
    if per_gpu > 0:
        n = actors or max(1, int(session.gpus // per_gpu))
    else:
        n = actors or max(1, int(session.cpus // max(cpus_per_actor, 1e-9)))
    return n, float(cpus_per_actor), per_gpu
