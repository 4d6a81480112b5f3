"""GLIDER_MAX_CONCURRENT_REQUESTS: past the limit a request is refused at once (REST 503 with
Retry-After, gRPC RESOURCE_EXHAUSTED) instead of queueing; probes still answer; nothing is lost."""

from __future__ import annotations

import asyncio

import grpc
import httpx
from glider.server.api.grpc import GrpcServer
from glider.server.api.rest import ConcurrencyLimit, create_app
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
