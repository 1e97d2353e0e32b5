"""A throwaway Redis Cluster on loopback: six ``redis-server`` nodes, three masters and three
replicas, made with ``redis-cli --cluster create``. Used by the tests (one per session), the
benchmarks and ``scripts/redis-cluster`` (a developer's, until Ctrl-C).

Ports are below 55,536 because each node's cluster bus listens on port + 10,000. The nodes die
with the process that started them (``PR_SET_PDEATHSIG``), even when it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
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

_PR_SET_PDEATHSIG = 1
NODE_TIMEOUT_MS = 1000


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(n: int) -> list[int]:
    """``n`` ports below 55,536 whose port + 10,000 (the cluster bus) is free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20_000, 45_000)
        if port not in ports and _free(port) and _free(port + 10_000):
            ports.append(port)
    return ports


def redis_cli(port: int, *args: str, timeout: float = 10) -> str:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout).stdout


@dataclass
class Cluster:
    ports: list[int]
    workdir: Path
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis-cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        log = open(node_dir / "redis.log", "ab")  # noqa: SIM115 - the node keeps it open
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--cluster-replica-validity-factor", "0", "--appendonly", "no", "--save", "",
             "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
             "--protected-mode", "no", "--dir", str(node_dir)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + 10
        while redis_cli(port, "PING").strip() != "PONG":
            if time.monotonic() > deadline or self.procs[port].poll() is not None:
                raise RuntimeError(f"redis-server on {port} did not start")
            time.sleep(0.05)

    def masters(self) -> list[int]:
        return [port for port in self.ports if self.procs[port].poll() is None
                and "role:master" in redis_cli(port, "INFO", "replication")]

    def wait_ready(self, timeout: float = 30) -> None:
        """Every slot served and every live master with a replica in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = [port for port in self.ports if self.procs[port].poll() is None]
            states = [redis_cli(port, "CLUSTER", "INFO") for port in alive]
            masters = self.masters()
            synced = all("connected_slaves:1" in redis_cli(port, "INFO", "replication")
                         for port in masters)
            if all("cluster_state:ok" in state for state in states) and synced \
                    and len(masters) == 3:
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become ready")

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_cluster() -> Cluster:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are needed (Debian: redis-server)")
    cluster = Cluster(free_cluster_ports(6), Path(tempfile.mkdtemp(prefix="pns-redis-")))
    try:
        for i, port in enumerate(list(cluster.ports)):
            for _attempt in range(5):
                try:
                    cluster.start_node(port)
                    break
                except RuntimeError:  # the port was taken between the check and the bind
                    cluster.procs.pop(port).kill()
                    port = free_cluster_ports(1)[0]
                    cluster.ports[i] = port
            else:
                raise RuntimeError("no free ports for a Redis Cluster node")
        created = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in cluster.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        cluster.wait_ready()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def main() -> None:
    with running_cluster() as cluster:
        print(cluster.url, flush=True)
        print(f"(nodes' files in {cluster.workdir}; Ctrl-C stops them)", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
