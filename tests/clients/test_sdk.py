"""The SDK's retries (REST and gRPC) and its episode stream, against the real app and gRPC server
on a backend whose failures the test controls."""

from __future__ import annotations

import time

import httpx
import pytest
from glider.clients.sdk import (
    AsyncGliderClient,
    AsyncGliderGrpcClient,
    GliderAPIError,
    GliderGrpcError,
)
from glider.server.api.grpc import GrpcServer
from glider.server.api.ratelimit import ClientRateLimiter
from glider.server.api.rest import RateLimit, create_app
from glider.server.store import MemoryEpisodeStore

from tests.conftest import free_port
from tests.server.test_api import make_agent


def fail_first(backend, n: int) -> list[int]:
    """Make the backend's next ``n`` generate calls fail; returns the list counting every call."""
    calls, generate = [], backend.generate

    async def flaky(specs):
        calls.append(1)
        if len(calls) <= n:
            backend.fail = True
            try:
                return await generate(specs)
            finally:
                backend.fail = False
        return await generate(specs)

    backend.generate = flaky
    return calls


class CountRequests:
    def __init__(self, app):
        self.app, self.count = app, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/act":
            self.count += 1
        return await self.app(scope, receive, send)


@pytest.fixture
async def agent(tmp_path):
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore())
    await agent.start()
    agent.test_backend = backend
    yield agent
    await agent.close()


def rest_client(app, **kw) -> AsyncGliderClient:
    return AsyncGliderClient("http://t", transport=httpx.ASGITransport(app=app), **kw)


async def test_rest_retries_what_the_server_refused_and_steps_once(agent):
    app = CountRequests(create_app(agent))
    calls = fail_first(agent.test_backend, 2)
    async with rest_client(app, retries=3) as client:
        first = await client.act("hall", task="boil water")  # two 503s, then the episode starts
        second = await client.act("kitchen", episode_id=first.episode_id, step=1)
    assert (first.step, second.step) == (0, 1)
    assert app.count == 4 and len(calls) >= 3
    assert await agent.store.count() == 1  # the failed starts left no episode behind
    assert (await agent.store.get(first.episode_id)).step == 2


async def test_rest_gives_up_after_its_retries_and_never_retries_a_client_error(agent):
    app = CountRequests(create_app(agent))
    fail_first(agent.test_backend, 10)
    async with rest_client(app, retries=2) as client:
        with pytest.raises(GliderAPIError) as exc:
            await client.act("hall", task="boil water")
        assert exc.value.status == 503 and exc.value.code == "backend_unavailable"
        assert app.count == 3
        with pytest.raises(GliderAPIError) as exc:
            await client.act("hall", episode_id="no-such-episode")
        assert exc.value.status == 404 and app.count == 4  # not retried
    async with rest_client(app) as client:  # the default: no retries
        with pytest.raises(GliderAPIError):
            await client.act("hall", task="boil water")
        assert app.count == 5


async def test_rest_retry_waits_for_retry_after(agent):
    app = RateLimit(create_app(agent), limiter=ClientRateLimiter("1/second"))
    async with rest_client(app, retries=2) as client:
        first = await client.act("hall", task="boil water")
        t0 = time.monotonic()
        second = await client.act("kitchen", episode_id=first.episode_id, step=1)
        waited = time.monotonic() - t0
    assert second.step == 1 and waited >= 0.5  # refused with Retry-After: 1, then answered


@pytest.fixture
async def grpc_server(agent):
    server = GrpcServer(agent, "127.0.0.1", free_port(), 1 << 20, rate_limiter=None)
    await server.start()
    yield server
    await server.stop(0)


async def test_grpc_retry_policy_rides_over_engine_failures(agent, grpc_server):
    calls = fail_first(agent.test_backend, 2)
    async with AsyncGliderGrpcClient(grpc_server.address, retries=3) as client:
        reply = await client.act("hall", task="boil water")
    assert reply.step == 0 and len(calls) >= 3 and await agent.store.count() == 1
    fail_first(agent.test_backend, 1)
    async with AsyncGliderGrpcClient(grpc_server.address) as client:
        with pytest.raises(GliderGrpcError) as exc:
            await client.act("hall", episode_id=reply.episode_id, step=1)
        assert exc.value.code == "UNAVAILABLE"
    assert (await agent.store.get(reply.episode_id)).step == 1  # unchanged by the failure


async def test_grpc_retry_honours_the_rate_limit_pushback(agent):
    server = GrpcServer(agent, "127.0.0.1", free_port(), 1 << 20, rate_limiter=ClientRateLimiter("1/second"))
    await server.start()
    try:
        async with AsyncGliderGrpcClient(server.address, retries=2) as client:
            first = await client.act("hall", task="boil water")
            t0 = time.monotonic()
            second = await client.act("kitchen", episode_id=first.episode_id, step=1)
            assert second.step == 1 and time.monotonic() - t0 >= 0.5
    finally:
        await server.stop(0)


async def test_episode_stream_plays_to_the_end_and_resumes_with_act_after_a_failure(agent, grpc_server):
    async with AsyncGliderGrpcClient(grpc_server.address) as client:
        async with client.episode("boil water") as episode:
            replies = [await episode.start("hall")]
            replies.append(await episode.step("kitchen", reward=1.0))
            fail_first(agent.test_backend, 1)
            with pytest.raises(GliderGrpcError) as exc:
                await episode.step("stove")
            assert exc.value.code == "UNAVAILABLE"
            with pytest.raises(GliderAPIError) as exc:  # the failed call is not written to again
                await episode.step("stove")
            assert exc.value.code == "stream_closed" and "act(" in exc.value.message
        eid = episode.episode_id
        assert [r.step for r in replies] == [0, 1] and {r.episode_id for r in replies} == {eid}
        resumed = await client.act("stove", episode_id=eid, step=2)  # where the stream left it
        assert resumed.step == 2
        async with client.episode("melt ice", episode_id="my-episode") as episode:
            assert (await episode.start("hall")).episode_id == "my-episode"
            assert (await episode.step("the end", done=True)).done
            with pytest.raises(GliderAPIError) as exc:
                await episode.step("after the end")
            assert exc.value.code == "stream_closed"
        info = await client.get_episode("my-episode")
        assert info.status == "finished" and info.step == 1  # the done event ends it without a step

