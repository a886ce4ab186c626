"""A Ray cluster of several nodes on this one machine, for the engine's tests and benchmarks.

Each node is a `ray start --block` process on its own loopback address (127.0.0.2 for the head, 127.0.0.3, ...):
Ray binds to the address a node is given, so the nodes are as separate as Ray lets them be on one machine. The
cluster has its own temporary folder and ports, and token authentication with a token made for it; the driver
(this process, and any process given `cluster.env`) joins with the same token. Stopping a `--block` process stops
every process its node started.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from constitutional.models.local_server import free_port

RAY = str(Path(sys.executable).with_name("ray"))
START_SECONDS = 120.0  # a node on a busy two-core machine can take this long to register


def _ports(host: str) -> list[str]:
    """Every port a node listens on, chosen free, so a cluster never meets another one's defaults."""
    names = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export")
    return [f"--{name}-port={free_port(host)}" for name in (*names, "runtime-env-agent")]


@dataclass
class LocalCluster:
    address: str  # the head's host:port, what `engine.address` names
    env: dict[str, str]  # what a driver process needs in its environment to join (token auth)
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def workers(self, busy: bool = False) -> list[int]:
        """Process ids of the model replicas (`ray_workers.Replica` actors) the cluster's nodes run now; `busy`:
        only those doing a chunk (Ray titles a process by the actor method it is in)."""
        import psutil

        title = "ray::Replica.run" if busy else "ray::Replica"
        found = []
        for node in self.nodes:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(node.pid).children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        if " ".join(child.cmdline()).startswith(title):
                            found.append(child.pid)
        return found

    def kill_a_busy_worker(self, folder: Path, chunks: int, timeout: float = START_SECONDS * 5) -> int:
        """Once `chunks` chunks are on disk in the stage folder, SIGKILL a replica that is doing one; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = self.workers(busy=True) if len(list(folder.glob("part-chunk-*.jsonl"))) >= chunks else []
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                return busy[0]
            time.sleep(0.05)
        raise TimeoutError(f"no worker was busy after {chunks} chunks within {timeout:g} s")


def _wait_for_port(host: str, port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Ray head stopped on start (exit {process.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the Ray head did not listen on {host}:{port} within {START_SECONDS:g} s")


def _wait_for_nodes(count: int) -> None:
    import ray

    deadline = time.monotonic() + START_SECONDS
    while sum(node["Alive"] for node in ray.nodes()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} Ray nodes joined within {START_SECONDS:g} s")
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM: the node drains and stops what it started; its process group is killed if it has not in time."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1) -> Iterator[LocalCluster]:
    """A head and `nodes - 1` worker nodes on 127.0.0.2, 127.0.0.3, ...; this process is connected as the driver
    for the block (`ray.init`), and everything is stopped and removed when it ends."""
    import ray

    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head_host, port = "127.0.0.2", free_port("127.0.0.2")
    cluster = LocalCluster(address=f"{head_host}:{port}", env={k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
    common = [f"--num-cpus={cpus_per_node}", "--num-gpus=0", "--disable-usage-stats", "--block"]
    saved = {key: os.environ.get(key) for key in cluster.env}
    try:
        head_log = folder / "head.log"
        head = [
            *(RAY, "start", "--head", f"--node-ip-address={head_host}", f"--port={port}", f"--temp-dir={folder}"),
            *("--include-dashboard=false", f"--dashboard-port={free_port()}"),
            *_ports(head_host),
        ]
        cluster.nodes.append(_start_node([*head, *common], env, head_log))
        _wait_for_port(head_host, port, cluster.nodes[0], head_log)
        for number in range(1, nodes):
            host = f"127.0.0.{2 + number}"
            command = [RAY, "start", f"--address={cluster.address}", f"--node-ip-address={host}", *_ports(host)]
            cluster.nodes.append(_start_node([*command, *common], env, folder / f"node-{number}.log"))
        os.environ.update(cluster.env)
        _reread_auth()
        ray.init(address=cluster.address, logging_level="WARNING")
        _wait_for_nodes(nodes)
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for process in reversed(cluster.nodes):
            _stop(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reread_auth()
        shutil.rmtree(folder, ignore_errors=True)


def _reread_auth() -> None:
    """Ray reads its authentication mode and token once per process: make it read them again from the environment
    (this process may have used Ray before the cluster's token existed)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _start_node(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
