"""Pushed swaps: the trainer's publish notice reaches every replica on one Redis, with no poll at all."""

from __future__ import annotations

import asyncio
import shutil
import time

import grpc
import httpx
import pytest
import redis
from glider.clients.sdk import GliderAPIError, GliderClient
from glider.server.adapters.push import channel_name
from glider.trainer.lora import create_adapter
from glider.trainer.publish import publish_adapter
from glider.v1 import agent_pb2 as pb
from glider.v1 import agent_pb2_grpc as pb_grpc

from tests.conftest import ServerProcess

pytestmark = pytest.mark.integration

TOKEN = "push-admin-token"


def serving(server: ServerProcess, name: str) -> str | None:
    return httpx.get(f"{server.url}/readyz", timeout=5).json()["adapters"].get(name)


def test_a_publish_notice_swaps_every_replica_at_once(backbone_dir, adapters_dir, redis_server, tmp_path):
    registry = tmp_path / "adapters"
    shutil.copytree(adapters_dir, registry, symlinks=True)
    # polling off: only the notice can make either replica swap
    env = {"GLIDER_STORE": "redis", "GLIDER_REDIS_URL": redis_server.url_of(4), "GLIDER_ADMIN_TOKEN": TOKEN,
           "GLIDER_ADAPTER_POLL_S": "0"}
    replicas = [ServerProcess("hf", backbone_dir, registry, tmp_path / f"replica-{i}.log", **env) for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        first, second = replicas
        old = serving(second, "planner")
        # both replicas subscribe once they are ready; the notice must find the second one listening
        deadline = time.monotonic() + 20
        # (the session's other servers share this Redis on database 1: the channel keeps them out)
        while redis.Redis.from_url(redis_server.url_of(4)).pubsub_numsub(channel_name("glider:", 4))[0][1] < 2:
            assert time.monotonic() < deadline, "the replicas never subscribed"
            time.sleep(0.1)

        new = publish_adapter(registry, "planner", create_adapter(backbone_dir, tmp_path / "src", seed=11),
                              backbone_dir, stage="test").version
        time.sleep(1.0)
        assert serving(first, "planner") == serving(second, "planner") == old  # nobody polls

        with GliderClient(first.url) as client:
            reply = client.adapters_published(["planner"], token=TOKEN)
            assert reply["serving"]["planner"] == new and reply["replicas_notified"] == 1, reply
            assert client.act(observation="hallway", task="find a plant").adapter_versions["planner"] == new
            with pytest.raises(GliderAPIError) as unknown:
                client.adapters_published(["critic"], token=TOKEN)
            assert unknown.value.status == 404
            with pytest.raises(GliderAPIError) as anonymous:
                client.adapters_published(["planner"], token="wrong")
            assert anonymous.value.status == 403

        deadline = time.monotonic() + 10
        while serving(second, "planner") != new:
            assert time.monotonic() < deadline, second.log.read_text()[-3000:]
            time.sleep(0.05)
        with GliderClient(second.url) as client:
            assert client.act(observation="hallway", task="find a plant").adapter_versions["planner"] == new

        # gRPC says the same: the second replica, told of a second version, passes it back to the first
        newer = publish_adapter(registry, "planner", create_adapter(backbone_dir, tmp_path / "src2", seed=12),
                                backbone_dir, stage="test").version

        async def grpc_published():
            async with grpc.aio.insecure_channel(second.grpc_target) as channel:
                return await pb_grpc.AdapterAdminStub(channel).AdaptersPublished(
                    pb.AdaptersPublishedRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),))

        reply = asyncio.run(grpc_published())
        assert (reply.profile, reply.serving["planner"], reply.replicas_notified) == ("default", newer, 1)
        deadline = time.monotonic() + 10
        while serving(first, "planner") != newer:
            assert time.monotonic() < deadline, first.log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        for replica in replicas:
            replica.stop()
