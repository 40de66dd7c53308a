"""A real ``redis-server`` on a free loopback port, for the Redis tests and benchmarks.

``RedisServer().start()`` runs ``redis-server --port P --bind 127.0.0.1 --save ""
--appendonly no`` (or ``appendonly yes`` in a data directory, to test restarts), waits
until it answers ``PING``, and can pause (SIGSTOP), resume, stop and restart it.
Where the binary is missing, :data:`SKIP_REASON` says so and the tests skip with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["REDIS_SERVER", "SKIP_REASON", "RedisServer", "free_port"]

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = (
    "redis-server is not on the PATH: install it (apt-get install redis-server) "
    "to run the Redis tests"
)
STARTUP_TIMEOUT = 10.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """True if a Redis on ``port`` answers ``PING`` with ``+PONG`` (not ``-LOADING``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process. ``appendonly=True`` keeps data in ``data_dir``."""

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        appendonly: bool = False,
        binary: str | None = None,
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        self.binary = binary or REDIS_SERVER
        if self.binary is None:
            raise RuntimeError(SKIP_REASON)
        if appendonly and data_dir is None:
            raise ValueError("appendonly needs a data_dir")
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (on the same port after a stop) and wait until it answers."""
        assert self.binary is not None
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.data_dir is not None:
            args += ["--dir", str(self.data_dir)]
        args += self.extra_args
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not ping(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM: it writes its append-only file first)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot shut down
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, as with a stalled or cut-off host."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def flush(self) -> None:
        """Delete every key (``FLUSHALL``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(64).startswith(b"+OK")
