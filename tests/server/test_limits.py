"""GLIDER_MAX_CONCURRENT_REQUESTS: past the limit a request is refused at once (REST 503 with
Retry-After, gRPC RESOURCE_EXHAUSTED) instead of queueing; probes still answer; nothing is lost.
GLIDER_RATE_LIMIT: the same, per client and over time (REST 429)."""

from __future__ import annotations

import asyncio
import copy

import grpc
import httpx
import pytest
from glider.server.api.grpc import GrpcServer
from glider.server.api.ratelimit import ClientRateLimiter, peer_host
from glider.server.api.rest import ConcurrencyLimit, RateLimit, create_app
from glider.server.settings import Settings
from glider.server.store import MemoryEpisodeStore
from glider.v1 import agent_pb2 as pb
from glider.v1 import agent_pb2_grpc as pb_grpc

from tests.badinput import error_of
from tests.conftest import free_port
from tests.server.test_api import make_agent


async def test_rest_refuses_past_the_limit_but_answers_probes(tmp_path):
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore())
    await agent.start()
    app = ConcurrencyLimit(create_app(agent), limit=2, metrics=agent.metrics)
    backend.gate = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        held = [asyncio.create_task(client.post("/act", json={"task": f"t{i}", "observation": "o"}))
                for i in range(2)]
        await asyncio.sleep(0.1)
        over = await client.post("/act", json={"task": "t3", "observation": "o"})
        assert error_of(over, 503)["code"] == "overloaded" and over.headers["retry-after"] == "1"
        assert (await client.get("/healthz")).status_code == 200  # a busy pod is not a dead one
        assert (await client.get("/readyz")).status_code == 200
        backend.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await client.post("/act", json={"task": "t4", "observation": "o"})).status_code == 200
        assert await agent.store.count() == 3  # the refused request left no episode behind
        assert 'glider_errors_total{code="overloaded"} 1.0' in (await client.get("/metrics")).text
    await agent.close()


async def test_grpc_refuses_past_the_limit_with_resource_exhausted(tmp_path):
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore())
    await agent.start()
    server = GrpcServer(agent, "127.0.0.1", free_port(), 1 << 20, max_concurrent_rpcs=2)
    await server.start()
    backend.gate = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AgentStub(channel)
            held = [asyncio.ensure_future(stub.Act(pb.ActRequest(task=f"t{i}", observation="o"), timeout=10))
                    for i in range(2)]
            await asyncio.sleep(0.2)
            try:
                await stub.Act(pb.ActRequest(task="t3", observation="o"), timeout=10)
                raise AssertionError("the third call was not refused")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            backend.gate.set()
            assert [r.step for r in await asyncio.gather(*held)] == [0, 0]
            assert (await stub.Act(pb.ActRequest(task="t4", observation="o"), timeout=10)).step == 0
    finally:
        await server.stop(0)
        await agent.close()


async def _settled(condition, timeout_s: float = 2.0) -> None:
    """Wait until ``condition()`` holds (the server's bookkeeping after a call ended), at most ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def _sample(agent, name: str, **labels) -> float:
    return agent.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_rest_rate_limit_is_per_client_and_refused_requests_leave_nothing(tmp_path):
    agent, _ = make_agent(tmp_path, MemoryEpisodeStore())
    await agent.start()
    limiter = ClientRateLimiter("3/minute", client_header="X-Real-IP")
    app = RateLimit(create_app(agent), limiter=limiter, metrics=agent.metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        alice, bob = {"x-real-ip": "10.0.0.1"}, {"x-real-ip": "10.0.0.2"}
        first = (await client.post("/act", json={"task": "t", "observation": "o"}, headers=alice)).json()
        eid = first["episode_id"]
        for i in (1, 2):
            assert (await client.post("/act", json={"episode_id": eid, "observation": f"o{i}"},
                                      headers=alice)).status_code == 200
        before = copy.deepcopy(await agent.store.get(eid))
        over = await client.post("/act", json={"episode_id": eid, "observation": "o3"}, headers=alice)
        assert error_of(over, 429)["code"] == "rate_limited"
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert await agent.store.get(eid) == before  # the refused step changed nothing
        assert (await client.get("/healthz", headers=alice)).status_code == 200  # probes are exempt
        # another client has its own budget; the header names the client, not the (shared) peer
        assert (await client.post("/act", json={"task": "t", "observation": "o"}, headers=bob)).status_code == 200
        assert _sample(agent, "glider_errors_total", code="rate_limited") == 1.0
    await agent.close()


async def test_grpc_rate_limit_counts_calls_and_stream_events_and_shares_the_rest_budget(tmp_path):
    agent, _ = make_agent(tmp_path, MemoryEpisodeStore())
    await agent.start()
    limiter = ClientRateLimiter("4/minute")
    server = GrpcServer(agent, "127.0.0.1", free_port(), 1 << 20, rate_limiter=limiter)
    await server.start()
    rest = RateLimit(create_app(agent), limiter=limiter, metrics=agent.metrics)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rest, client=("127.0.0.1", 5000)),
                                     base_url="http://t") as client:
            assert (await client.post("/act", json={"task": "t", "observation": "o"})).status_code == 200
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AgentStub(channel)
            assert (await stub.Act(pb.ActRequest(task="t", observation="o"), timeout=10)).step == 0
            call = stub.Episode()
            await call.write(pb.EpisodeEvent(start=pb.EpisodeStart(task="t", observation="o")))
            eid = (await call.read()).episode_id
            await call.write(pb.EpisodeEvent(step=pb.EpisodeStep(observation="o1")))
            assert (await call.read()).step == 1  # REST 1 + Act 1 + 2 events: the budget of 4 is spent
            before = copy.deepcopy(await agent.store.get(eid))
            await call.write(pb.EpisodeEvent(step=pb.EpisodeStep(observation="o2")))
            try:
                await call.read()
                raise AssertionError("the fifth request was not refused")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in exc.details()
                assert 1 <= int(dict(exc.trailing_metadata())["retry-after"]) <= 60
            assert await agent.store.get(eid) == before  # resumable where it was
            try:
                await stub.Act(pb.ActRequest(episode_id=eid, observation="o2"), timeout=10)
                raise AssertionError("a unary call past the limit was not refused")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # a call is counted when its handler ends, which may be just after the client has its status
        await _settled(lambda: _sample(agent, "glider_grpc_requests_total", method="Act", code="RESOURCE_EXHAUSTED")
                       + _sample(agent, "glider_grpc_requests_total", method="Episode", code="RESOURCE_EXHAUSTED") == 2)
        assert _sample(agent, "glider_grpc_requests_total", method="Act", code="OK") == 1.0
        assert _sample(agent, "glider_grpc_requests_total", method="Act", code="RESOURCE_EXHAUSTED") == 1.0
        assert _sample(agent, "glider_grpc_requests_total", method="Episode", code="RESOURCE_EXHAUSTED") == 1.0
        # a latency per unary call and per answered stream step
        assert _sample(agent, "glider_grpc_latency_seconds_count", method="Act") == 2.0
        assert _sample(agent, "glider_grpc_latency_seconds_count", method="Episode") == 2.0
    finally:
        await server.stop(0)
        await agent.close()


def _fake_clock(monkeypatch, start: float) -> list[float]:
    from glider.server.api import ratelimit

    now = [start]
    clock = type("Clock", (), {"monotonic": staticmethod(lambda: now[0]), "time": staticmethod(lambda: now[0])})
    monkeypatch.setattr(ratelimit, "time", clock)
    return now


def test_a_spent_budget_stays_spent_across_a_window_boundary(monkeypatch):
    """At most N requests in any rolling period: a client that spends its budget just before a clock
    minute starts is refused just after it too (a fixed or two-window counter would let it in again)."""
    now = _fake_clock(monkeypatch, 60 * 29_000_000 + 59.5)  # half a second before a minute boundary
    limiter = ClientRateLimiter("3/minute")
    assert [limiter.retry_after("alice") for _ in range(3)] == [None, None, None]
    now[0] += 1.0  # into the next minute
    refused = limiter.retry_after("alice")
    assert refused is not None and 58 <= refused <= 60
    assert limiter.retry_after("bob") is None
    now[0] += 59.1  # a minute after the first three: room again
    assert limiter.retry_after("alice") is None


def test_every_limit_counts_and_the_strictest_sets_the_wait(monkeypatch):
    now = _fake_clock(monkeypatch, 1000.0)
    limiter = ClientRateLimiter("2/second;3/minute")
    assert [limiter.retry_after("a") for _ in range(3)] == [None, None, 1]  # the second's limit
    now[0] += 1.0
    assert limiter.retry_after("a") is None  # 3 in the minute now
    now[0] += 1.0
    assert limiter.retry_after("a") == 58  # the minute's: its first request leaves at 1060
    now[0] += 58.0
    assert limiter.retry_after("a") is None


def test_the_limiter_forgets_clients_that_went_quiet(monkeypatch):
    """Memory follows the clients of the last period, not every client ever seen."""
    now = _fake_clock(monkeypatch, 1000.0)
    limiter = ClientRateLimiter("5/second;100/minute")
    for k in range(1000):
        assert limiter.retry_after(f"10.0.{k // 256}.{k % 256}") is None
    assert len(limiter._hits) == 1000
    now[0] += 61.0
    assert limiter.retry_after("10.9.9.9") is None
    assert list(limiter._hits) == ["10.9.9.9"]
    for _ in range(100):  # a busy client keeps its latest times only, as many as the largest limit counts
        now[0] += 0.5
        limiter.retry_after("busy")
    assert len(limiter._hits["busy"]) <= 100


def test_rate_limit_settings_and_peer_addresses():
    with pytest.raises(ValueError, match="rate limit"):
        Settings(rate_limit="fast please")
    assert Settings(rate_limit=" 20/second;600/minute ").rate_limit == "20/second;600/minute"
    assert peer_host("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert peer_host("ipv6:[::1]:51234") == "::1"
    assert peer_host("unix:/tmp/glider.sock") == "unix:/tmp/glider.sock"
