"""Wiring: settings -> backend, store, registry, Agent -> FastAPI app -> uvicorn.

REST (uvicorn) and gRPC (grpc.aio) share one process, one event loop and
one Agent.  The engine loads in the background after the server starts listening, so
``/healthz`` answers at once and ``/readyz`` turns 200 when the model and
every adapter the mode needs are loaded (what a Kubernetes startup probe
wants).  If loading fails, or the engine dies later, the server stops with exit
code 1: a dead engine cannot be revived in place, and a supervisor that restarts
the process (Kubernetes, Docker's restart policy) brings it back with its
episodes when they live in Redis.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from glider.server.adapters.registry import AdapterRegistry
from glider.server.agent import Agent
from glider.server.api.ratelimit import ClientRateLimiter
from glider.server.api.rest import BodyLimit, ConcurrencyLimit, RateLimit, create_app
from glider.server.backends.base import BackendError, create_backend
from glider.server.metrics import Metrics
from glider.server.settings import Settings
from glider.server.store import create_store
from glider.server.store.recorder import TrajectoryRecorder

log = logging.getLogger(__name__)


def build_agent(settings: Settings) -> Agent:
    metrics = Metrics()
    recorder = None
    if settings.record:
        recorder = TrajectoryRecorder(settings.episodes_dir(), max_bytes=settings.record_max_bytes,
                                      on_drop=metrics.records_dropped.inc)
    return Agent(
        settings=settings,
        backend=create_backend(settings),
        store=create_store(settings),
        registry=AdapterRegistry(settings.adapters_dir()),
        metrics=metrics,
        recorder=recorder,
    )


def build_app(settings: Settings, agent: Agent | None = None, on_fatal=None):
    """The ASGI app over ``agent``; ``on_fatal(exc)`` is called when the engine fails to start or dies."""
    agent = agent or build_agent(settings)
    # one limiter for both transports: a client's budget covers REST and gRPC together
    limiter = ClientRateLimiter(settings.rate_limit, settings.rate_limit_client_header) if settings.rate_limit else None

    @asynccontextmanager
    async def lifespan(app):
        grpc_server = None
        if settings.grpc_enabled:
            from glider.server.api.grpc import GrpcServer

            grpc_server = GrpcServer(agent, settings.host, settings.grpc_port, settings.max_body_bytes,
                                     tls=settings.grpc_tls(), max_concurrent_rpcs=settings.max_concurrent_requests,
                                     rate_limiter=limiter)
            await grpc_server.start()
        app.state.grpc = grpc_server

        async def start():
            try:
                await agent.start()
                if grpc_server is not None:
                    await grpc_server.set_serving(True)
                log.info("ready: backend=%s mode=%s adapters=%s", agent.backend.kind, agent.mode,
                         agent.backend.adapter_versions())
            except Exception as exc:
                log.error("engine failed to start: %s", exc, exc_info=exc)
                app.state.start_error = exc
                if on_fatal is not None:
                    on_fatal(exc)
                return
            await watch_engine()

        async def watch_engine():
            # an attribute read per period (vLLM's monitor thread sets it; there is no callback to
            # await): no I/O on the serving path, and a dead engine is noticed even when idle
            while (failure := agent.backend.failure) is None:  # noqa: ASYNC110
                await asyncio.sleep(settings.engine_watchdog_s)
            log.critical("%s; stopping with exit code 1 so that the supervisor restarts the server", failure)
            if grpc_server is not None:
                await grpc_server.set_serving(False)
            if on_fatal is not None:
                on_fatal(BackendError(failure))

        app.state.start_error = None
        task = asyncio.create_task(start(), name="engine")
        try:
            yield
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            if grpc_server is not None:
                await grpc_server.stop()
            await agent.close()

    app = create_app(agent, lifespan=lifespan)
    app.state.agent = agent
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.max_concurrent_requests is not None:
        app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests, metrics=agent.metrics)
    if limiter is not None:
        app.add_middleware(RateLimit, limiter=limiter, metrics=agent.metrics)
    return app


def serve(settings: Settings) -> int:
    """Run the server until interrupted; returns the process exit code."""
    import uvicorn

    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = build_app(settings, on_fatal=stop)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    server.run()
    return 1 if failed else 0
