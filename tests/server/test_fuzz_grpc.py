"""Fuzzing the gRPC transport: random field values, malformed and truncated frames, wrong message
types, oversize messages, streams that misbehave (events after done, half-closed, cancelled, slow).

The server is the real GrpcServer on a loopback port, over the real Agent and store on the
controlled backend. Every call must end OK or with a status that names the client's mistake,
never INTERNAL or UNKNOWN; afterwards the server still serves, and no step task is left running.
"""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
from glider.server.api.grpc import GrpcServer
from glider.server.store import MemoryEpisodeStore
from glider.v1 import agent_pb2 as pb
from glider.v1 import agent_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port
from tests.server.test_api import make_agent

EXAMPLES = int(os.environ.get("GLIDER_FUZZ_EXAMPLES", "60"))
MAX_MESSAGE = 64 << 10
S = grpc.StatusCode
# what a client's mistake may earn; INTERNAL and UNKNOWN would be the server's own failure
CLIENT_ERRORS = {S.INVALID_ARGUMENT, S.NOT_FOUND, S.ALREADY_EXISTS, S.ABORTED, S.FAILED_PRECONDITION,
                 S.RESOURCE_EXHAUSTED, S.UNAUTHENTICATED, S.PERMISSION_DENIED, S.CANCELLED,
                 S.DEADLINE_EXCEEDED}

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)  # protobuf: valid UTF-8
ids = st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True), text)
numbers = st.floats(allow_nan=True, allow_infinity=True)
samplings = st.none() | st.builds(
    lambda t, p, seed: pb.Sampling(**{k: v for k, v in {"temperature": t, "top_p": p, "seed": seed}.items()
                                      if v is not None}),
    st.none() | numbers, st.none() | numbers, st.none() | st.integers(-(2**63), 2**63 - 1))
act_requests = st.builds(
    lambda obs, eid, task, reward, done, step, score, sampling, commands: pb.ActRequest(
        observation=obs, episode_id=eid, task=task, reward=reward, done=done, sampling=sampling,
        valid_actions=commands,
        **({"step": step} if step is not None else {}), **({"score": score} if score is not None else {})),
    text, ids, text, numbers, st.booleans(), st.none() | st.integers(-(2**63), 2**63 - 1), st.none() | numbers,
    samplings, st.lists(text, max_size=12))


@pytest.fixture
async def grpc_target(tmp_path):
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore(max_episodes=100_000), max_observation_chars=1000,
                                max_body_bytes=MAX_MESSAGE)
    await agent.start()
    server = GrpcServer(agent, "127.0.0.1", free_port(), MAX_MESSAGE)
    await server.start()
    await server.set_serving(True)
    try:
        yield server.address, agent, backend
    finally:
        await server.stop(0)
        await agent.close()


def status_of(exc: grpc.aio.AioRpcError) -> grpc.StatusCode:
    assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details())
    assert exc.details() and "Traceback" not in exc.details()
    return exc.code()


async def still_serves(channel) -> None:
    stub = pb_grpc.AgentStub(channel)
    first = await stub.Act(pb.ActRequest(task="boil water", observation="hallway"), timeout=10)
    second = await stub.Act(pb.ActRequest(episode_id=first.episode_id, observation="kitchen", step=1), timeout=10)
    assert second.step == 1


def step_tasks() -> list[asyncio.Task]:
    """Tasks the server runs for calls (the test's own task excluded)."""
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
            and "_handle_" in repr(t.get_coro())]


async def test_random_act_requests_get_answers_or_client_errors(grpc_target):
    address, agent, _ = grpc_target
    seen: dict = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AgentStub(channel)
        eid = (await stub.Act(pb.ActRequest(task="t", observation="o"), timeout=10)).episode_id
        requests = []

        @given(request=act_requests, continue_known=st.booleans())
        @settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def gather(request, continue_known):
            if continue_known:  # half the requests aim at an episode that exists
                request.episode_id = eid
            requests.append(request)

        gather()
        for request in requests:
            before = await agent.store.get(eid)
            try:
                await stub.Act(request, timeout=10)
                seen["OK"] = seen.get("OK", 0) + 1
            except grpc.aio.AioRpcError as exc:
                code = status_of(exc)
                seen[code.name] = seen.get(code.name, 0) + 1
                if request.episode_id == eid:  # a refused step leaves its episode exactly as it was
                    assert (await agent.store.get(eid)) == before
        await still_serves(channel)
    assert seen.get("OK") and seen.get("INVALID_ARGUMENT"), seen


@pytest.mark.parametrize("frame", [b"\xff\xff\xff\x0f garbage", b"\x0a\x05ab", b"\x12", b"\x22\x80",
                                   bytes(range(256))], ids=["varint", "truncated-string", "cut-tag",
                                                            "bad-length", "noise"])
async def test_malformed_and_truncated_frames_are_invalid_argument(grpc_target, frame):
    address, _, _ = grpc_target
    async with grpc.aio.insecure_channel(address) as channel:
        raw = channel.unary_unary("/glider.v1.Agent/Act")  # bytes in, bytes out
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(frame, timeout=10)
        assert status_of(err.value) == S.INVALID_ARGUMENT
        await still_serves(channel)


async def test_wrong_message_types_and_oversize_messages(grpc_target):
    address, _, _ = grpc_target
    async with grpc.aio.insecure_channel(address) as channel:
        wrong = channel.unary_unary("/glider.v1.Agent/GetEpisode",
                                    request_serializer=pb.ActRequest.SerializeToString,
                                    response_deserializer=pb.EpisodeInfo.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as err:  # field 1 (observation) read as an episode id
            await wrong(pb.ActRequest(observation="no such episode"), timeout=10)
        assert status_of(err.value) == S.NOT_FOUND
        stub = pb_grpc.AgentStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Act(pb.ActRequest(task="t", observation="x" * (MAX_MESSAGE + 1)), timeout=10)
        assert status_of(err.value) == S.RESOURCE_EXHAUSTED
        await still_serves(channel)


async def test_misbehaving_streams_end_cleanly_and_leak_nothing(grpc_target):
    address, agent, backend = grpc_target
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AgentStub(channel)
        start = pb.EpisodeEvent(start=pb.EpisodeStart(task="boil water", observation="hallway"))
        step = pb.EpisodeEvent(step=pb.EpisodeStep(observation="kitchen"))
        done = pb.EpisodeEvent(step=pb.EpisodeStep(observation="the end", done=True))

        # a step before start, two starts, and events after done
        for events, expected in (([step], S.INVALID_ARGUMENT), ([start, start], S.INVALID_ARGUMENT)):
            call = stub.Episode(iter(events), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert status_of(err.value) == expected
        call = stub.Episode(iter([start, done, step, step]), timeout=10)
        replies = [r async for r in call]  # the stream closes at done; what follows is not read
        assert [r.done for r in replies] == [False, True]

        # a malformed frame in the middle of a stream
        raw = channel.stream_stream("/glider.v1.Agent/Episode")
        call = raw(iter([start.SerializeToString(), b"\x12\x80garbage"]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert status_of(err.value) == S.INVALID_ARGUMENT and "malformed EpisodeEvent" in err.value.details()

        # half-closed at once: no events at all is a clean, empty stream
        assert [r async for r in stub.Episode(iter([]), timeout=10)] == []

        # cancelled mid-step by the client, and a slow client that sends nothing for a while
        backend.gate = asyncio.Event()
        queue: asyncio.Queue = asyncio.Queue()

        async def events():
            while (event := await queue.get()) is not None:
                yield event

        call = stub.Episode(events(), timeout=30)
        await queue.put(start)
        await asyncio.sleep(0.2)  # the first step is held at the engine
        call.cancel()
        backend.gate.set()
        backend.gate = None
        await asyncio.sleep(0.3)

        slow = stub.Episode(events(), timeout=30)
        await queue.put(start)
        first = await slow.read()
        await asyncio.sleep(1.0)  # a client that thinks for a while
        await queue.put(step)
        second = await slow.read()
        assert (second.episode_id, second.step) == (first.episode_id, 1)
        await queue.put(None)  # half-close: the server ends the stream
        assert await slow.read() == grpc.aio.EOF
        assert await slow.code() == S.OK

        await still_serves(channel)
    await asyncio.sleep(0.2)
    assert not step_tasks(), step_tasks()
    # every episode left behind is a committed one that a client can resume or delete
    assert await agent.store.count() >= 1


async def test_an_episode_carries_its_sampling_over_grpc(grpc_target):
    """The same per-episode settings as REST: on Act, on a stream's start and on CreateEpisode, shown
    by GetEpisode; out of range is INVALID_ARGUMENT with the field named, and creates nothing."""
    target, agent, backend = grpc_target
    seen = backend.specs
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AgentStub(channel)
        own = pb.Sampling(temperature=0.5, top_p=0.8, seed=7)
        reply = await stub.Act(pb.ActRequest(task="boil water", observation="hall", sampling=own))
        info = await stub.GetEpisode(pb.GetEpisodeRequest(episode_id=reply.episode_id))
        assert info.sampling == own
        assert seen and all((s.temperature, s.top_p) == (0.5, 0.8) for s in seen)

        async def start_only():
            yield pb.EpisodeEvent(start=pb.EpisodeStart(task="boil water", observation="hall", episode_id="s-7",
                                                        sampling=pb.Sampling(temperature=0.3)))
        assert [r.step async for r in stub.Episode(start_only())] == [0]
        assert (await stub.GetEpisode(pb.GetEpisodeRequest(episode_id="s-7"))).sampling.temperature == 0.3
        created = await stub.CreateEpisode(pb.CreateEpisodeRequest(task="t", episode_id="c-1",
                                                                   sampling=pb.Sampling(seed=3)))
        assert created.sampling.seed == 3 and not created.sampling.HasField("temperature")

        episodes = len(agent.store._episodes)
        for bad, field in [(pb.Sampling(temperature=float("nan")), "temperature"),
                           (pb.Sampling(temperature=99.0), "temperature"),
                           (pb.Sampling(top_p=1.5), "top_p"), (pb.Sampling(seed=-1), "seed")]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Act(pb.ActRequest(task="boil water", observation="hall", sampling=bad))
            assert err.value.code() == S.INVALID_ARGUMENT and field in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:  # only when an episode starts
            await stub.Act(pb.ActRequest(episode_id=reply.episode_id, observation="x", sampling=own))
        assert err.value.code() == S.INVALID_ARGUMENT and "sampling" in err.value.details()
        assert len(agent.store._episodes) == episodes


async def test_a_refused_stream_start_leaves_no_episode(grpc_target):
    """A `start` that names its id and is then refused (observation over the limit) creates nothing,
    as the same step over REST would not."""
    target, agent, _ = grpc_target
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AgentStub(channel)

        async def start():
            yield pb.EpisodeEvent(start=pb.EpisodeStart(task="boil water", observation="x" * 1001,
                                                        episode_id="refused-1"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [r async for r in stub.Episode(start())]
        assert err.value.code() == S.INVALID_ARGUMENT and "observation" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetEpisode(pb.GetEpisodeRequest(episode_id="refused-1"))
        assert err.value.code() == S.NOT_FOUND


async def test_admissible_commands_over_grpc_act_and_stream(grpc_target):
    """Act and the episode stream carry `valid_actions` and answer one of them with both texts; a list
    over the server's count or length is INVALID_ARGUMENT naming the limit, and the episode stays as it was."""
    target, agent, backend = grpc_target
    s = agent.settings
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AgentStub(channel)
        reply = await stub.Act(pb.ActRequest(task="boil water", observation="hall",
                                             valid_actions=["open the door", "go north"]))
        assert (reply.action, reply.grounded, reply.generated_action) == ("go north", True, "look around")
        before = await stub.GetEpisode(pb.GetEpisodeRequest(episode_id=reply.episode_id))
        for bad, limit in [(["look"] * (s.max_valid_actions + 1), s.max_valid_actions),
                           (["x" * (s.max_valid_action_chars + 1)], s.max_valid_action_chars)]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Act(pb.ActRequest(episode_id=reply.episode_id, observation="x", valid_actions=bad))
            assert err.value.code() == S.INVALID_ARGUMENT and str(limit) in err.value.details()
        assert await stub.GetEpisode(pb.GetEpisodeRequest(episode_id=reply.episode_id)) == before

        async def episode():
            yield pb.EpisodeEvent(start=pb.EpisodeStart(task="boil water", observation="hall",
                                                        valid_actions=["look around", "go west"]))
            yield pb.EpisodeEvent(step=pb.EpisodeStep(observation="a corridor", valid_actions=["go west"]))
            yield pb.EpisodeEvent(step=pb.EpisodeStep(observation="west"))
        replies = [r async for r in stub.Episode(episode())]
        assert [(r.action, r.grounded, r.HasField("generated_action")) for r in replies] == [
            ("look around", False, True), ("go west", True, True), ("look around", False, False)]
