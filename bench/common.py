"""Shared helpers of the benchmarks: settings for the embedded backbone, a server in this process."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from pathlib import Path

from glider.clients.local_server import LocalServer, free_port  # noqa: F401 (free_port: the benchmarks' import)

ROOT = Path(__file__).resolve().parents[1]


def settings(**overrides):
    from glider.server.settings import Settings

    base = dict(home=ROOT / ".glider", kv_cache_gib=1, log_level="warning")
    base.update(overrides)
    return Settings(**base)


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


def publish_fresh_pair(registry, model, src_dir, seed: int = 0) -> None:
    """An untrained planner and executor for ``model`` published into ``registry`` (the benches'
    stand-in for trained adapters: the same LoRA compute); ``src_dir`` holds their peft files."""
    from glider.trainer.lora import create_adapter
    from glider.trainer.publish import publish_adapter

    for k, role in enumerate(("planner", "executor")):
        publish_adapter(registry, role, create_adapter(model, Path(src_dir) / role, seed=seed + k), model,
                        stage="bench")


class ServerProcess(LocalServer):
    """``glider serve`` in its own process (as deployed) for settings ``s``, on a free loopback port."""

    def __init__(self, s, **env):
        super().__init__(Path(s.home), cwd=ROOT, **{"GLIDER_KV_CACHE_GIB": "2", **env})


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

        t = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.sink.append(time.perf_counter() - t)
