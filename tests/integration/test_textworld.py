"""TextWorld games generated offline, replayed from their walkthrough and played through the server."""

from __future__ import annotations

import pytest
from glider.clients.envs.textworld import TextWorld, generate_game
from glider.clients.play import play_episode
from glider.clients.sdk import GliderClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def game(tmp_path_factory):
    return generate_game(tmp_path_factory.mktemp("tw"), seed=3)


def test_walkthrough_reaches_the_max_score(game):
    world = TextWorld(game)
    try:
        first = world.reset()
        assert world.task and first.valid_actions and first.score == 0
        walkthrough = first.info["walkthrough"]
        assert len(walkthrough) >= 3
        step = first
        for action in walkthrough:
            assert action in step.valid_actions
            step = world.step(action)
        assert step.done and step.score == 1.0 and step.info["won"]
    finally:
        world.close()


def test_plays_through_the_server(vllm_server, game):
    world = TextWorld(game)
    try:
        with GliderClient(vllm_server.url) as client:
            report = play_episode(client, world, max_steps=3)
        assert len(report.steps) == 3 and report.task_name == game.stem
        assert report.task == world.task
    finally:
        world.close()


def test_play_command_on_generated_games(vllm_server, tmp_path):
    from glider.clients.play import play_many

    reports = play_many(["tw-cooking"], "test", [0, 1], transport="rest", server=vllm_server.url, parallel=2,
                        max_steps=2, env="textworld", games_dir=tmp_path)
    assert sorted(len(r.steps) for r in reports) == [2, 2]
    assert len({r.task for r in reports}) >= 1 and all(r.task_name == "tw-cooking" for r in reports)
    assert sorted(p.name for p in tmp_path.glob("*.z8")) == ["tw-cooking-s200000.z8", "tw-cooking-s200001.z8"]
