"""``glider serve`` in a child process on free loopback ports, as deployed: what a benchmark, the trainer's
data collection or a script plays against when no server is running yet.

    with LocalServer(home, GLIDER_MODEL=..., GLIDER_ADAPTERS=..., GLIDER_RECORD_DIR=...) as server:
        ... GliderClient(server.url) ...

Its stderr goes to ``<home>/logs/server-<time>-<port>.log`` (shown if it fails to start, kept after a run
for what went wrong in it).  Closing it sends SIGTERM and waits: the server shuts its engine down itself
(a SIGKILL would orphan vLLM's engine processes).  A SIGTERM to the process that owns it (``kill``, a
session's end) unwinds like Ctrl-C, so the owner's ``with`` / ``finally`` closes the server too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(128 + signum)


def unwind_on_sigterm() -> None:
    """SIGTERM raises SystemExit in this process, unless its owner handles SIGTERM itself: without it a
    killed benchmark leaves its ``glider serve`` child and that child's engine processes running."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


class LocalServer:
    def __init__(self, home: Path, *, cwd: Path | None = None, **env: str):
        unwind_on_sigterm()
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        full_env = {**os.environ, "GLIDER_PORT": str(self.port), "GLIDER_GRPC_PORT": str(self.grpc_port),
                    "GLIDER_HOST": "127.0.0.1", "GLIDER_HOME": str(home), "GLIDER_LOG_LEVEL": "warning",
                    **{k: str(v) for k, v in env.items()}}
        log_dir = Path(home) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"
        self.log = self.log_path.open("w+b")
        self.proc = subprocess.Popen([sys.executable, "-m", "glider.clients.cli", "serve"], env=full_env,
                                     cwd=cwd, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_ready(self, timeout: float = 600) -> None:
        """Until /readyz answers; a server that exits first (say, adapters that do not match the
        model) fails at once with the end of its log."""
        from glider.clients.sdk import GliderClient

        deadline = time.monotonic() + timeout
        with GliderClient(self.url) as client:
            while time.monotonic() < deadline:
                if client.ready() is not None:
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        self.log.seek(0)
        return "\n".join(self.log.read().decode(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def __enter__(self) -> LocalServer:
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()
