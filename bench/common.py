"""Shared helpers of the benchmarks: settings for the embedded backbone, a server in this process."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def settings(**overrides):
    from glider.server.settings import Settings

    base = dict(home=ROOT / ".glider", kv_cache_gib=1, log_level="warning")
    base.update(overrides)
    return Settings(**base)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def result(figure: str, value: float, target: str = "", *, met: bool | None = None) -> None:
    """One headline figure, on a line of its own that bench/report.py collects into its table."""
    import json

    print("RESULT " + json.dumps({"figure": figure, "value": round(float(value), 4), "target": target,
                                  "met": met}), flush=True)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def pct(values, q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


class ServerProcess:
    """``glider serve`` in its own process (as deployed), on a free loopback port, until closed."""

    def __init__(self, s, **env):
        import subprocess
        import sys

        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "GLIDER_PORT": str(self.port), "GLIDER_GRPC_PORT": str(self.grpc_port),
               "GLIDER_HOME": str(s.home),
               "GLIDER_LOG_LEVEL": "warning", "GLIDER_KV_CACHE_GIB": "2", **env}
        # the server's stderr: shown if it fails to start, kept after a run for what went wrong in it
        log_dir = Path(s.home) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"server-{time.strftime('%Y%m%d-%H%M%S')}-{self.port}.log"
        self.log = self.log_path.open("w+b")
        self.proc = subprocess.Popen([sys.executable, "-m", "glider.clients.cli", "serve"], env=env,
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log)

    def wait_ready(self, timeout: float = 600) -> None:
        """Until /readyz answers; a server that exits first (say, adapters that do not match the
        model) fails at once with the end of its log."""
        import time

        from glider.clients.sdk import GliderClient

        deadline = time.monotonic() + timeout
        with GliderClient(self.url) as client:
            while time.monotonic() < deadline:
                if client.ready() is not None:
                    return
                if self.proc.poll() is not None:
                    self.log.seek(0)
                    tail = self.log.read().decode(errors="replace").splitlines()[-15:]
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n" + "\n".join(tail))
                time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout:.0f}s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class InProcessServer:
    """The real app (Agent + FastAPI) under uvicorn, in this event loop, on a loopback port."""

    def __init__(self, s):
        from glider.server.app import build_agent

        self.settings = s.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
        self.agent = build_agent(self.settings)
        self.url = f"http://127.0.0.1:{self.settings.port}"

    async def __aenter__(self):
        import uvicorn
        from glider.server.api.rest import BodyLimit, create_app

        await self.agent.start()
        app = BodyLimit(create_app(self.agent), limit=self.settings.max_body_bytes)
        self.server_s: list[float] = []  # time each request spent inside the ASGI app
        app = _Timed(app, self.server_s)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.settings.port, log_level="warning",
                                access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc):
        self.server.should_exit = True
        await self.task
        await self.agent.close()


class _Timed:
    """Outermost ASGI wrapper: how long each HTTP request spends in the server's app."""

    def __init__(self, app, sink):
        self.app, self.sink = app, sink

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import time

        t = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.sink.append(time.perf_counter() - t)
