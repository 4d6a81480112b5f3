"""REST transport: FastAPI routes that validate the wire format and call the Agent service.

Errors come out as ``{"error": {"code", "message"}}`` with the status from
``glider.server.errors.ERROR_TABLE``; validation problems are 422 with the
offending field named; nothing reaches the client as a 500 with a traceback.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from glider.server.agent import Agent
from glider.server.api.admin import admin_router
from glider.server.errors import ERROR_TABLE, classify
from glider.server.policy.state import EpisodeState, Segment, Turn
from glider.v1.rest import (
    ActRequest,
    ActResponse,
    EpisodeCreate,
    EpisodeView,
    ErrorResponse,
    Health,
    SegmentView,
    TurnView,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

_ERRORS = {
    code: {"model": ErrorResponse}
    for code in (404, 409, 413, 422, 429, 503)
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _turn_view(turn: Turn) -> TurnView:
    return TurnView(observation=turn.observation, action=turn.action, done=turn.done, thought=turn.thought)


def _segment_view(seg: Segment) -> SegmentView:
    return SegmentView(
        subgoal=seg.subgoal,
        turns=[_turn_view(t) for t in seg.turns],
        completed=seg.completed,
        adapter_version=seg.adapter_version,
    )


def episode_view(state: EpisodeState) -> EpisodeView:
    return EpisodeView(
        episode_id=state.id,
        task=state.task,
        mode=state.mode,
        profile=state.profile,
        status=state.status.value,
        step=state.step,
        subgoal=state.subgoal,
        steps_in_subgoal=state.steps_in_subgoal,
        subgoal_count=state.subgoal_count,
        planner_calls=state.planner_calls,
        executor_calls=state.executor_calls,
        total_reward=state.total_reward,
        adapter_versions=state.adapter_versions,
        sampling=state.sampling,
        current=_segment_view(state.current) if state.current else None,
        finished=[_segment_view(s) for s in state.finished],
        history=[_turn_view(t) for t in state.history],
    )


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before they are read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    response = _error(413, "body_too_large", f"request body over {self.limit} bytes")
                    return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            return await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            response = _error(413, "body_too_large", f"request body over {self.limit} bytes")
            return await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _refusal(metrics, status: int, code: str, message: str, *, retry_after: int) -> JSONResponse:
    """A request a limit turned away before it reached the app: counted, with when to come back."""
    if metrics is not None:
        metrics.errors.labels(code).inc()
    response = _error(status, code, message)
    response.headers["Retry-After"] = str(retry_after)
    return response


class ConcurrencyLimit:
    """At most ``limit`` requests in flight; past it, 503 ``overloaded`` with Retry-After at once,
    instead of a queue that grows until every client times out. Probes and metrics are exempt, so
    a busy pod is not restarted or taken out of its Service for being busy."""

    EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app, limit: int, metrics=None):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            response = _refusal(self.metrics, 503, "overloaded",
                                f"more than {self.limit} requests in flight; retry shortly", retry_after=1)
            return await response(scope, receive, send)
        self.in_flight += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class RateLimit:
    """Per-client rate limit (``ClientRateLimiter``): past it, 429 ``rate_limited`` with Retry-After.
    Probes and metrics are exempt, like ConcurrencyLimit's."""

    def __init__(self, app, limiter, metrics=None):
        self.app, self.limiter, self.metrics = app, limiter, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in ConcurrencyLimit.EXEMPT:
            return await self.app(scope, receive, send)
        wait = self.limiter.retry_after(self.limiter.rest_client(scope))
        if wait is None:
            return await self.app(scope, receive, send)
        response = _refusal(self.metrics, 429, "rate_limited", self.limiter.message(wait), retry_after=wait)
        return await response(scope, receive, send)


class Observe:
    """Latency and status per route template (pure ASGI: no per-request Request/Response copies)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.request_latency.labels(path).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(path, str(status)).inc()


def _methods_of(app, scope) -> list[str]:
    """The methods some route of ``app`` serves at the scope's path (any method)."""
    methods = set()
    for route in app.router.routes:
        if getattr(route, "methods", None) and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


def create_app(agent: Agent, *, lifespan=None) -> FastAPI:
    app = FastAPI(
        title="GLIDER agent",
        version="0.1.0",
        description="Hierarchical LLM agent: a planner writes subgoals, an executor acts, on one backbone.",
        lifespan=lifespan,
    )
    metrics = agent.metrics

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg')}")
        metrics.errors.labels("invalid_input").inc()
        return _error(422, "invalid_input", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not read the body (e.g. not UTF-8): bad input, as always
            metrics.errors.labels("invalid_input").inc()
            return _error(422, "invalid_input", f"request body could not be parsed: {exc.detail}")
        response = _error(exc.status_code, "http_error", str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            # RFC 9110 §15.5.6: Allow lists every method of the resource; Starlette's names only the first
            # route that matched the path, and FastAPI registers one route per method
            response.headers["Allow"] = ", ".join(_methods_of(request.app, request.scope))
        return response

    async def _domain(request: Request, exc: Exception):
        known = classify(exc)
        if known is None:  # a bug: log it, tell the client nothing internal
            log.error("unhandled error on %s", request.url.path, exc_info=exc)
            metrics.errors.labels("internal").inc()
            return _error(500, "internal", "internal error")
        code, status, _ = known
        metrics.errors.labels(code).inc()
        response = _error(status, code, str(exc))
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    for etype, *_ in ERROR_TABLE:
        app.add_exception_handler(etype, _domain)
    app.add_exception_handler(Exception, _domain)
    app.add_middleware(Observe, metrics=metrics)

    app.include_router(admin_router(agent))

    @app.post("/act", response_model=ActResponse, responses=_ERRORS,
              summary="Answer one environment step (starts an episode when no episode_id is given)")
    async def act(body: ActRequest) -> Response:
        result = await agent.act(
            observation=body.observation, episode_id=body.episode_id, task=body.task,
            reward=body.reward, done=body.done, step=body.step, score=body.score, sampling=body.sampling,
            valid_actions=body.valid_actions, profile=body.profile,
        )
        reply = ActResponse(
            episode_id=result.episode_id, step=result.step, action=result.action,
            subgoal=result.subgoal, new_subgoal=result.new_subgoal,
            subgoal_done=result.subgoal_done, subgoal_index=result.subgoal_index,
            done=result.done, adapter_versions=result.adapter_versions, fallback=result.fallback,
            grounded=result.grounded, generated_action=result.generated_action, profile=result.profile,
        )
        # serialised once here: a returned model would be dumped, validated again against response_model
        # and encoded by FastAPI, three passes on the hot path (response_model still documents the schema)
        return Response(reply.model_dump_json(), media_type="application/json")

    @app.post("/episodes", response_model=EpisodeView, status_code=201, responses=_ERRORS)
    async def create_episode(body: EpisodeCreate) -> EpisodeView:
        return episode_view(await agent.create_episode(body.task, body.episode_id, body.sampling, body.profile))

    @app.get("/episodes/{episode_id}", response_model=EpisodeView, responses=_ERRORS)
    async def get_episode(episode_id: str) -> EpisodeView:
        return episode_view(await agent.get_episode(episode_id))

    @app.delete("/episodes/{episode_id}", status_code=204, responses=_ERRORS)
    async def delete_episode(episode_id: str) -> Response:
        await agent.delete_episode(episode_id)
        return Response(status_code=204)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}},
             summary="The process is up and its engine alive (a liveness probe)")
    async def healthz():
        # 200 while the model still loads (that is /readyz's business); 503 once the engine has
        # died, for the moment before the server exits, or if its supervisor should not wait for that
        if (failure := agent.backend.failure) is not None:
            return JSONResponse(Health(status="failed", backend=agent.backend.kind, detail=failure).model_dump(),
                                status_code=503)
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}},
             summary="The engine is loaded with every adapter the default profile needs")
    async def readyz():
        body = Health(status="ready" if agent.ready else "loading", backend=agent.backend.kind,
                      mode=agent.mode, adapters=agent.adapters.serving_versions(),
                      profiles={name: served.state() for name, served in agent.profiles.served.items()})
        return JSONResponse(body.model_dump(), status_code=200 if agent.ready else 503)

    def openapi() -> dict:
        """The generated schema plus this server's configured limits, so the contract is exact."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            limits = agent.settings
            models = schema["components"]["schemas"]
            models["ActRequest"]["properties"]["observation"]["maxLength"] = limits.max_observation_chars
            for model in ("ActRequest", "EpisodeCreate"):
                task = models[model]["properties"]["task"]
                for option in task.get("anyOf", [task]):
                    if option.get("type") == "string":
                        option["maxLength"] = limits.max_task_chars
            commands = models["ActRequest"]["properties"]["valid_actions"]
            for option in commands.get("anyOf", [commands]):
                if option.get("type") == "array":
                    option["maxItems"] = limits.max_valid_actions
                    option["items"]["maxLength"] = limits.max_valid_action_chars
            temperature = models["Sampling"]["properties"]["temperature"]
            for option in temperature.get("anyOf", [temperature]):
                if option.get("type") == "number":
                    option["maximum"] = limits.episode_max_temperature
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)",
             response_class=PlainTextResponse)
    async def prometheus() -> Response:
        metrics.active_episodes.set(await agent.store.count())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Starlette tries routes in order and FastAPI puts its docs routes first: /act, the hot path, was
    # the 17th match attempt of every step (docs/benchmarks.md: ~15 % of the stack's time, in-process A/B)
    routes = app.router.routes
    routes.insert(0, routes.pop(next(k for k, r in enumerate(routes) if getattr(r, "path", None) == "/act")))
    return app
