"""Agent profiles served: each episode keeps its profile, whose adapters, settings and metrics are its own;
one profile's swap or breakage never touches another's."""

from __future__ import annotations

import pytest
from glider.server.errors import InvalidInput
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
    with pytest.raises(InvalidInput, match="belongs to profile 'default'"):
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


async def test_a_prompted_base_model_profile_uses_no_adapter(agent):
    agent, backend = agent
    await agent.profiles.put("react", ProfileSpec(mode=PolicyMode.flat, adapters=False))
    result = await agent.act(observation="hall", task="boil water", profile="react")
    assert result.action and [s.adapter for s in backend.specs] == [None]


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
