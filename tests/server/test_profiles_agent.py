"""Agent profiles served: each episode keeps its profile, whose adapters, settings and metrics are its own;
one profile's swap or breakage never touches another's."""

from __future__ import annotations

import pytest
from glider.server.errors import ProfileMismatch
from glider.server.policy.modes import PolicyMode
from glider.server.profiles import GenerationSettings, ProfileNotFound, ProfileSpec
from glider.server.served_profiles import ProfileUnavailable
from glider.server.store import MemoryEpisodeStore
from glider.server.store.recorder import TrajectoryRecorder
from glider.trainer.publish import publish_adapter

from tests.server.test_api import make_agent


def publish_into(agent, tmp_path, profile: str, names=("planner", "executor")) -> None:
    registry = agent.profiles.store.registry(profile)
    for name in names:
        publish_adapter(registry.root, name, tmp_path / f"src-{name}", tmp_path / "model", stage="test")


@pytest.fixture
async def agent(tmp_path):
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore())
    agent.recorder = TrajectoryRecorder(tmp_path / "episodes")
    await agent.start()
    yield agent, backend
    await agent.close()


async def test_two_profiles_serve_their_own_adapters_and_settings(agent, tmp_path):
    agent, backend = agent
    publish_into(agent, tmp_path, "textworld")
    served = await agent.profiles.put("textworld", ProfileSpec(generation=GenerationSettings(temperature=0.5)))
    assert served.ready and set(backend.adapters) == {"planner", "executor", "textworld/planner",
                                                      "textworld/executor"}
    a = await agent.act(observation="hall", task="boil water")
    b = await agent.act(observation="hall", task="boil water", profile="textworld")
    assert {s.adapter for s in backend.specs[:2]} == {"planner", "executor"}
    assert {s.adapter for s in backend.specs[2:]} == {"textworld/planner", "textworld/executor"}
    assert {s.temperature for s in backend.specs[:2]} == {0.0} and {s.temperature for s in backend.specs[2:]} == {0.5}
    assert (await agent.get_episode(a.episode_id)).profile == "default"
    assert (await agent.get_episode(b.episode_id)).profile == "textworld"
    # later steps stay on the episode's profile without naming it
    await agent.act(observation="kitchen", episode_id=b.episode_id)
    assert {s.adapter for s in backend.specs[4:]} <= {"textworld/planner", "textworld/executor"}
    metrics = agent.metrics.registry
    assert metrics.get_sample_value("glider_env_steps_total", {"profile": "textworld", "mode": "separate"}) == 2
    assert metrics.get_sample_value("glider_env_steps_total", {"profile": "default", "mode": "separate"}) == 1
    assert metrics.get_sample_value("glider_subgoals_total", {"profile": "textworld"}) == 1  # its second step kept the subgoal
    assert metrics.get_sample_value("glider_subgoals_total", {"profile": "default"}) == 1
    agent.recorder.close()
    records = [r for f in (tmp_path / "episodes").glob("*.jsonl") for r in map(__import__("json").loads,
                                                                              f.read_text().splitlines())]
    assert sorted(r["profile"] for r in records) == ["default", "textworld", "textworld"]


async def test_a_swap_in_one_profile_leaves_the_others_versions(agent, tmp_path):
    agent, backend = agent
    publish_into(agent, tmp_path, "textworld")
    await agent.profiles.put("textworld", ProfileSpec())
    publish_into(agent, tmp_path, "textworld", names=("planner",))  # v0002 of textworld's planner
    result = await agent.profiles.get("textworld").adapters.load("planner")
    assert (result.previous, result.version) == ("v0001", "v0002")
    assert backend.adapters["textworld/planner"].version == "v0002"
    assert backend.adapters["planner"].version == "v0001"
    assert agent.profiles.default.adapters.serving() == {"planner": "v0001", "executor": "v0001"}


async def test_unknown_and_mismatched_profiles_are_refused_and_change_nothing(agent):
    agent, backend = agent
    with pytest.raises(ProfileNotFound, match="no profile named 'nope'"):
        await agent.act(observation="hall", task="boil water", profile="nope")
    assert await agent.store.count() == 0 and backend.specs == []
    first = await agent.act(observation="hall", task="boil water")
    before = await agent.get_episode(first.episode_id)
    with pytest.raises(ProfileMismatch, match="belongs to profile 'default'"):
        await agent.act(observation="kitchen", episode_id=first.episode_id, profile="other")
    after = await agent.get_episode(first.episode_id)
    assert after.step == before.step == 1 and after.version == before.version


async def test_a_broken_profile_refuses_its_own_episodes_only_and_heals_when_published(agent, tmp_path):
    agent, backend = agent
    served = await agent.profiles.put("fresh", ProfileSpec())  # nothing published for it yet
    assert not served.ready and served.state()["state"] == "broken" and agent.ready
    with pytest.raises(ProfileUnavailable, match="'fresh' cannot serve"):
        await agent.act(observation="hall", task="boil water", profile="fresh")
    assert (await agent.act(observation="hall", task="boil water")).action  # the default serves on
    publish_into(agent, tmp_path, "fresh")
    for name in ("planner", "executor"):  # what the watcher does when the trainer publishes
        await served.adapters.check(name)
    assert served.ready and served.state()["state"] == "ready"
    assert (await agent.act(observation="hall", task="boil water", profile="fresh")).action


async def test_a_prompted_base_model_profile_uses_no_adapter_and_plain_instructions(agent):
    from glider.server.policy.prompts import INSTRUCTIONS

    agent, backend = agent
    await agent.profiles.put("prompted", ProfileSpec(mode=PolicyMode.flat, adapters=False,
                                                     generation=GenerationSettings(prompt_style="instruct")))
    result = await agent.act(observation="hall", task="boil water", profile="prompted")
    assert result.action and [s.adapter for s in backend.specs] == [None]
    assert backend.specs[0].prompt.startswith(INSTRUCTIONS + "\nTask: boil water\nObservation: hall\nAction:")
    await agent.act(observation="hall", task="boil water")  # the default profile keeps the trained format
    assert backend.specs[1].prompt.startswith("<|planner|>")
    for style in ("instruct", "react"):
        with pytest.raises(ValueError, match="flat-mode format"):
            ProfileSpec(generation=GenerationSettings(prompt_style=style))


async def test_deleting_a_profile_takes_its_adapters_out_of_the_engine(agent, tmp_path):
    agent, backend = agent
    publish_into(agent, tmp_path, "old")
    await agent.profiles.put("old", ProfileSpec())
    episode = await agent.act(observation="hall", task="boil water", profile="old")
    await agent.profiles.delete("old")
    assert set(backend.adapters) == {"planner", "executor"}
    with pytest.raises(ProfileNotFound):  # its running episodes end with a clear error, state unchanged
        await agent.act(observation="kitchen", episode_id=episode.episode_id)
    assert (await agent.get_episode(episode.episode_id)).step == 1


ADMIN = {"authorization": "Bearer test-token"}


@pytest.fixture
async def rest(tmp_path):
    import httpx
    from glider.server.api.rest import create_app

    agent, backend = make_agent(tmp_path, MemoryEpisodeStore(), admin_token="test-token")
    await agent.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(agent)), base_url="http://t") as client:
        yield client, agent, backend
    await agent.close()


async def test_profiles_over_rest_admin_act_and_readyz(rest, tmp_path):
    client, agent, backend = rest
    publish_into(agent, tmp_path, "textworld")
    created = await client.put("/admin/profiles/textworld", headers=ADMIN,
                               json={"mode": "separate", "generation": {"temperature": 0.3}})
    assert created.status_code == 200 and created.json()["state"] == "ready", created.text
    assert created.json()["serving"] == {"planner": "v0001", "executor": "v0001"}
    step = (await client.post("/act", json={"task": "boil water", "observation": "hall", "profile": "textworld"})).json()
    assert step["profile"] == "textworld"
    view = (await client.get(f"/episodes/{step['episode_id']}")).json()
    assert view["profile"] == "textworld"
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready" and set(ready["profiles"]) == {"default", "textworld"}
    assert ready["adapters"] == {"planner": "v0001", "executor": "v0001"}  # the default profile's, as before
    listed = (await client.get("/admin/profiles", headers=ADMIN)).json()["profiles"]
    assert [p["name"] for p in listed] == ["default", "textworld"]
    # per-profile adapter admin: a rollback with no history is a 404 for that profile only
    refused = await client.post("/admin/profiles/textworld/adapters/planner/rollback", headers=ADMIN)
    assert refused.status_code == 404 and "no previous version" in refused.json()["error"]["message"]
    assert (await client.delete("/admin/profiles/textworld", headers=ADMIN)).status_code == 204
    assert (await client.get("/admin/profiles/textworld", headers=ADMIN)).status_code == 404


async def test_unknown_or_malformed_profiles_get_a_clear_4xx_over_rest(rest):
    client, agent, backend = rest
    unknown = await client.post("/act", json={"task": "boil water", "observation": "hall", "profile": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "profile_not_found"
    bad = await client.post("/act", json={"task": "boil water", "observation": "hall", "profile": "../x"})
    assert bad.status_code == 422
    created = await client.post("/episodes", json={"task": "boil water", "profile": "nope"})
    assert created.status_code == 404
    bad_spec = await client.put("/admin/profiles/x", headers=ADMIN, json={"mode": "sideways"})
    assert bad_spec.status_code == 422
    assert await agent.store.count() == 0 and backend.specs == []
    assert (await client.get("/admin/profiles", headers=ADMIN)).json()["profiles"][0]["name"] == "default"
    assert len((await client.get("/admin/profiles", headers=ADMIN)).json()["profiles"]) == 1


async def test_unknown_profiles_over_grpc_are_not_found_and_change_nothing(tmp_path):
    import grpc
    from glider.server.api.grpc import GrpcServer
    from glider.v1 import agent_pb2 as pb
    from glider.v1 import agent_pb2_grpc as pb_grpc

    from tests.conftest import free_port

    agent, backend = make_agent(tmp_path, MemoryEpisodeStore())
    await agent.start()
    publish_into(agent, tmp_path, "textworld")
    await agent.profiles.put("textworld", ProfileSpec())
    server = GrpcServer(agent, "127.0.0.1", free_port(), 1 << 20)
    await server.start()
    await server.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AgentStub(channel)
            for call in (stub.Act(pb.ActRequest(task="boil", observation="hall", profile="nope"), timeout=10),
                         stub.CreateEpisode(pb.CreateEpisodeRequest(task="boil", profile="nope"), timeout=10)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Act(pb.ActRequest(task="boil", observation="hall", profile="Bad/Name"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await agent.store.count() == 0
            reply = await stub.Act(pb.ActRequest(task="boil", observation="hall", profile="textworld"), timeout=10)
            assert reply.profile == "textworld"
            assert (await stub.GetEpisode(pb.GetEpisodeRequest(episode_id=reply.episode_id))).profile == "textworld"
    finally:
        await server.stop(0)
        await agent.close()


async def test_lora_slots_are_sized_for_the_stored_profiles_with_swap_headroom(tmp_path, caplog, monkeypatch):
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore(), max_loras=2)
    store = agent.profiles.store
    store.put("textworld", ProfileSpec())  # separate: 2 adapters
    store.put("flat-one", ProfileSpec(mode=PolicyMode.flat))  # 1
    store.put("react", ProfileSpec(adapters=False))  # 0: the base model
    assert agent.profiles.lora_slots() == 2 + 2 + 1 + 0 + 2  # each adapter, and the largest profile again
    await agent.start()
    try:
        assert backend.lora_slots == 7
        # an engine with a fixed bound (vLLM's max_loras) is told when runtime profiles outgrow it
        monkeypatch.setattr(type(backend), "lora_capacity", property(lambda self: 4))
        with caplog.at_level("WARNING"):
            await agent.profiles.put("more", ProfileSpec())
        assert "serve 7 adapters and the engine batches at most 4" in caplog.text
    finally:
        await agent.close()

