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

Joining (``address``) goes the way Ray's own tools do on a cluster started by ``ray start``:
token authentication is used when a token is configured (``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, Ray's order) and ``RAY_AUTH_MODE`` is not
set. Before ``ray.init``, :func:`check_cluster` asks the cluster's GCS for its id and
version over gRPC with a few seconds' deadline, so an unreachable address, a missing or
wrong token or a version mismatch is one :class:`ClusterError` line saying what to set,
not Ray's retry loop (a warning a second for 25-40 s) and a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
}
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
PROBE_TIMEOUT_S = 5.0
_TOKEN_HINT = ("copy the head node's token (`ray get-auth-token` there) to ~/.ray/auth_token "
               "on this machine, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")


class ClusterError(Exception):
    """Joining a Ray cluster failed; the message is one line: why, and what to set."""


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


def token_source() -> str | None:
    """Where Ray reads this process's auth token from, in Ray's order (``RAY_AUTH_TOKEN``,
    then the file ``RAY_AUTH_TOKEN_PATH`` names, then ``~/.ray/auth_token``); None: nowhere.
    A ``RAY_AUTH_TOKEN_PATH`` that names no readable, non-empty file is a ClusterError."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return TOKEN_ENV
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        try:
            ok = bool(Path(path).expanduser().read_text().strip())
        except OSError as e:
            raise ClusterError(f"{TOKEN_PATH_ENV}={path}: cannot read the Ray auth token "
                               f"({e.strerror or e})") from None
        if not ok:
            raise ClusterError(f"{TOKEN_PATH_ENV}={path}: the Ray auth token file is empty")
        return f"{TOKEN_PATH_ENV} ({path})"
    default = Path.home() / ".ray" / "auth_token"
    try:
        return "~/.ray/auth_token" if default.read_text().strip() else None
    except OSError:
        return None


def use_token_auth_if_configured() -> str | None:
    """Token authentication for a join, as Ray's CLI does: on when a token is configured
    and ``RAY_AUTH_MODE`` is unset (an explicit ``RAY_AUTH_MODE`` is kept). Returns the
    token's source when token mode is on, else None."""
    mode = os.environ.get(AUTH_MODE_ENV)
    source = token_source()
    if mode is not None:
        return source if mode.strip().lower() == "token" else None
    if source is None:
        return None
    os.environ[AUTH_MODE_ENV] = "token"
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray caches its config: re-read RAY_AUTH_MODE
        AuthenticationTokenLoader.instance().reset_cache()
    return source


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a GCS address (None for ``auto``, ``ray://`` and other forms)."""
    if "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def check_cluster(address: str, token_from: str | None,
                  timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Ask the GCS at ``address`` for its cluster id and Ray/Python versions (gRPC, with a
    deadline; the token when token mode is on); ClusterError naming the problem and what
    to set. Other address forms (``auto``, ``ray://``) are left to ``ray.init``."""
    hp = _host_port(address)
    if hp is None:
        return
    where = f"cannot join the Ray cluster at {address}"
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ClusterError(
            f"{where}: {why.lower()}; start it there with `ray start --head --port {hp[1]}`, "
            "or check --address (the head's IP and the port `ray start --head` printed) "
            "and the firewall") from None

    import grpc
    from ray.core.generated import gcs_service_pb2 as pb
    from ray.core.generated import gcs_service_pb2_grpc as pb_grpc

    metadata: tuple[tuple[str, str], ...] = ()
    if token_from is not None:
        from ray._raylet import AuthenticationTokenLoader

        loader = AuthenticationTokenLoader.instance()
        if loader.has_token():
            metadata = tuple(loader.get_token_for_http_header().items())
    channel = grpc.insecure_channel(f"{hp[0]}:{hp[1]}")
    try:
        pb_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            pb.GetClusterIdRequest(), metadata=metadata, timeout=timeout_s)
        reply = pb_grpc.InternalKVGcsServiceStub(channel).InternalKVGet(
            pb.InternalKVGetRequest(key=b"CLUSTER_METADATA", namespace=b"cluster"),
            metadata=metadata, timeout=timeout_s)
    except grpc.RpcError as e:
        code = e.code() if hasattr(e, "code") else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            mode = os.environ.get(AUTH_MODE_ENV, "")
            if token_from is not None:
                raise ClusterError(f"{where}: it refused the auth token from {token_from}; "
                                   "use the head node's token (`ray get-auth-token` there) "
                                   "in ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
                                   ) from None
            if mode and mode.lower() != "token":
                raise ClusterError(f"{where}: it uses token authentication and "
                                   f"{AUTH_MODE_ENV}={mode} is set here; unset it (or set "
                                   f"{AUTH_MODE_ENV}=token) and {_TOKEN_HINT}") from None
            raise ClusterError(f"{where}: it uses token authentication and no token is set "
                               f"here; {_TOKEN_HINT}") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise ClusterError(f"{where}: no Ray GCS answered within {timeout_s:g} s; is "
                               "it the port `ray start --head --port` was given?") from None
        raise ClusterError(f"{where}: {one_line_error(e)}") from None
    finally:
        channel.close()
    try:
        meta = json.loads(reply.value.decode()) if reply.value else {}
    except (UnicodeDecodeError, ValueError):
        meta = {}
    theirs = (meta.get("ray_version"), meta.get("python_version"))
    if theirs[0]:
        from ray._private.utils import check_version_info, compute_version_info

        try:
            check_version_info(meta, "this machine")
        except RuntimeError:
            ours = compute_version_info()
            raise ClusterError(
                f"{where}: version mismatch: the cluster runs Ray {theirs[0]} on Python "
                f"{theirs[1]}, this machine Ray {ours[0]} on Python {ours[1]}; install the same "
                "Ray and Python versions on every machine") from None


def one_line_error(e: BaseException) -> str:
    """An exception as one line: its first non-empty line, without Ray's decorations."""
    text = str(e.details() if hasattr(e, "details") and callable(e.details) else e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def preflight(address: str | None) -> None:
    """Check that ``address`` (when given) can be joined, before a job writes anything."""
    if address:
        check_cluster(address, use_token_auth_if_configured())


def _join(address: str, **kw: Any) -> Any:
    """``ray.init(address=...)`` after :func:`check_cluster`; ClusterError on failure."""
    import ray

    token_from = use_token_auth_if_configured()
    check_cluster(address, token_from)
    try:
        return ray.init(address=address, **kw)
    except Exception as e:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError, ...)
        with contextlib.suppress(Exception):
            ray.shutdown()
        cause = e.__cause__ or e
        raise ClusterError(f"cannot join the Ray cluster at {address}: "
                           f"{one_line_error(cause)}") from None


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
        ctx = _join(address, **kw)
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


def check_fits(cpus: float, gpus: float) -> None:
    """ClusterError unless some live node of the cluster has ``cpus`` CPUs and ``gpus`` GPUs
    for one actor: Ray would otherwise keep the actors pending, and the job would hang."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPU {r.get('GPU', 0):g} GPU" for r in nodes)
    hint = ("start a node with GPUs (`ray start --address ... --num-gpus N`) or use "
            "--gpus-per-actor 0" if gpus > max((r.get("GPU", 0) for r in nodes), default=0)
            else "lower --cpus-per-actor")
    raise ClusterError(f"no node of the Ray cluster has {cpus:g} CPU and {gpus:g} GPU for an "
                       f"actor (--cpus-per-actor, --gpus-per-actor; nodes: {have or 'none'}); "
                       f"{hint}")


def actor_device() -> tuple[str, list[str]]:
    """Inside a Ray actor or task: the torch device for what Ray assigned it, and the GPU
    ids. Ray points ``CUDA_VISIBLE_DEVICES`` at the assigned GPUs, so ``cuda`` is the first
    of them; with no GPU assigned, or a logical one on a node where CUDA is not usable
    (``ray start --num-gpus 1`` on a machine without a GPU), ``cpu``."""
    import ray

    ids = [str(i) for i in ray.get_gpu_ids()]
    if not ids:
        return "cpu", ids
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu"), ids
