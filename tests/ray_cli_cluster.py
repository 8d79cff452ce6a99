"""A real Ray cluster on this machine, started with the ``ray`` CLI the way a user does
(``ray start --head``, then ``ray start --address`` per extra node), for tests and benches.

Token authentication is on (``RAY_AUTH_MODE=token``, the token in ``<root>/token`` via
``RAY_AUTH_TOKEN_PATH``; ``~/.ray`` is never touched). Every node gets its own ports (none
of Ray's defaults, so it runs beside other clusters), all nodes share one temp dir under
``root``, and each ``ray start --block`` runs in its own session at ``nice`` 15, so
:meth:`RayCliCluster.stop` ends exactly the processes it started: each node's process group,
then anything left whose command line names this cluster's temp dir (``ray stop`` would
stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
#: not passed on: auth settings of the caller, and the local-only mode a driver that joined a
#: loopback address sets in its own environment (jobs.cluster.use_loopback), with which
#: `ray start --address` refuses to start a second node
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def nice15() -> list[str]:
    """``nice`` up to niceness 15 (not 15 more: under a ``nice -n 15`` pytest that would be
    19), or ``$CDC_RAY_NICE``: next to a busy higher-priority process a Ray node at 15 can
    starve past Ray's own start-up deadline (30 s, not configurable)."""
    return ["nice", "-n", str(max(0, int(os.environ.get("CDC_RAY_NICE", 15)) - os.nice(0)))]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _ports(n: int) -> list[int]:
    """``n`` consecutive free ports in 20000-31999: below Linux's ephemeral range (32768 up),
    where a port free now may be taken by an outgoing connection before Ray binds it."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        if all(_free(p) for p in range(base, base + n)):
            return list(range(base, base + n))
    raise RuntimeError("no free port range")


class RayCliCluster:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Ray's socket paths must stay under 107 characters: a short temp dir of our own
        self.temp_dir = Path(f"/tmp/cdc-ray-{secrets.token_hex(4)}")
        self.token_path = self.root / "token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def env(self) -> dict[str, str]:
        """The environment of a client that has the cluster's token (``RAY_AUTH_TOKEN_PATH``;
        ``RAY_AUTH_MODE`` left unset, as a user would)."""
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        return {**env, "RAY_AUTH_TOKEN_PATH": str(self.token_path), "OMP_NUM_THREADS": "1",
                "RAY_USAGE_STATS_ENABLED": "0"}

    def start_node(self, *, cpus: int = 1, gpus: int = 0, tries: int = 2) -> None:
        """``ray start --head`` the first time, ``ray start --address`` after. On a starved
        machine a node can miss Ray's start-up deadline: it is stopped and started again."""
        for attempt in range(tries):
            try:
                return self._start_node(cpus, gpus)
            except RuntimeError:
                proc = self.procs.pop()
                with contextlib.suppress(ProcessLookupError):  # its children too
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if attempt == tries - 1:
                    raise

    def _start_node(self, cpus: int, gpus: int, timeout_s: float = 180) -> None:
        p = _ports(30)
        args = [RAY, "start", "--block", "--num-cpus", str(cpus), "--num-gpus", str(gpus),
                "--node-ip-address", "127.0.0.1", "--temp-dir", str(self.temp_dir),
                "--object-store-memory", str(80 * 1024 * 1024), "--disable-usage-stats",
                "--include-log-monitor", "false",
                "--node-manager-port", str(p[1]), "--object-manager-port", str(p[2]),
                "--dashboard-agent-listen-port", str(p[3]),
                "--dashboard-agent-grpc-port", str(p[4]), "--runtime-env-agent-port", str(p[5]),
                "--metrics-export-port", str(p[6]), "--min-worker-port", str(p[10]),
                "--max-worker-port", str(p[29])]
        if not self.address:
            args += ["--head", "--port", str(p[0]), "--ray-client-server-port", str(p[7]),
                     "--include-dashboard", "false", "--dashboard-port", str(p[8])]
        else:
            args += ["--address", self.address]
        log = self.root / f"node{len(self.procs)}-{time.time_ns()}.log"
        # the raylet may take a while to register on a loaded machine (Ray's default: 30 s)
        env = {**self.env(), "RAY_AUTH_MODE": "token", "RAY_raylet_start_wait_time_s": "120"}
        with open(log, "w") as out:
            proc = subprocess.Popen([*nice15(), *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout_s
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed (exit {proc.poll()}):\n"
                                   f"{log.read_text()[-3000:]}{self._exit_log()}")
            time.sleep(0.5)
        if not self.address:
            self.address = f"127.0.0.1:{p[0]}"

    def _exit_log(self) -> str:
        """What Ray recorded about processes of this cluster that exited (for errors)."""
        logs = sorted(self.temp_dir.glob("session_*/logs/ray_process_exit.log"))
        return "".join(f"\n{p}:\n{p.read_text()[-2000:]}" for p in logs)

    def stop(self) -> None:
        """End this cluster's processes only (see the module doc); remove its temp dir."""
        import psutil

        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # ray start --block stops its children
        for proc in self.procs:  # a head drains for up to 30 s on SIGTERM: no need here
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        mine = str(self.temp_dir)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(mine in a for a in proc.info["cmdline"] or ()):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # stragglers of our own sessions
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayCliCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
