"""`glider play`: ScienceWorld episodes in parallel environment processes, over gRPC and REST."""

from __future__ import annotations

from pathlib import Path

import pytest
from glider.clients.cli import app
from glider.clients.play import parse_variations, play_many
from typer.testing import CliRunner

pytestmark = pytest.mark.integration


def test_parse_variations():
    assert parse_variations("dev:0-2") == ("dev", [0, 1, 2])
    assert parse_variations("test:0,3-4") == ("test", [0, 3, 4])
    with pytest.raises(ValueError):
        parse_variations("valid:0")


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_play_many_in_parallel_processes(vllm_server, transport):
    server = vllm_server.grpc_target if transport == "grpc" else vllm_server.url
    reports = play_many(["boil", "find-plant"], "dev", [0, 1], transport=transport, server=server,
                        parallel=2, max_steps=3)
    assert sorted((r.task_name, len(r.steps)) for r in reports) == [
        ("boil", 3), ("boil", 3), ("find-plant", 3), ("find-plant", 3)]
    assert len({r.episode_id for r in reports}) == 4
    # two dev variations of one task are two different episodes of the environment
    boil = [r for r in reports if r.task_name == "boil"]
    assert boil[0].task == boil[1].task and boil[0].steps[0].observation != "" and boil[0].subgoals >= 1


def test_play_command_prints_a_summary(vllm_server):
    result = CliRunner().invoke(app, ["play", "--task", "boil", "--variations", "test:0", "--transport", "grpc",
                                      "--server", vllm_server.grpc_target, "--parallel", "1", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "boil" in result.output and "score ×100" in result.output
    bad = CliRunner().invoke(app, ["play", "--variations", "nope"])
    assert bad.exit_code == 2 and "dev:0-9" in bad.output
    beyond = CliRunner().invoke(app, ["play", "--task", "identify-life-stages-1", "--variations", "train:40",
                                      "--server", vllm_server.url, "--parallel", "1", "--max-steps", "1"])
    assert beyond.exit_code == 2 and "train variations, not 41" in beyond.output, beyond.output


def test_sampled_episodes_replay_from_their_recorded_seed(vllm_server):
    """O2O's exploration: a sampled episode's seed is recorded (in its report and in the server's log), and
    playing it again with that seed gives the same episode; another seed gives another."""
    from glider.clients.play import PlayJob, episode_sampling, play_job
    from glider.trainer.data.logs import trajectories_from_logs
    from glider.v1.rest import Sampling

    def play(sampling):
        return play_job(PlayJob("scienceworld", "boil", "dev", 0, "grpc", vllm_server.grpc_target, 6,
                                Path(".glider/games"), sampling=sampling))

    first = play(episode_sampling(1.5, seed=0, key="o2o/0/boil/0"))
    assert first.sampling["temperature"] == 1.5 and first.sampling["seed"] > 0
    again = play(Sampling(**first.sampling))
    other = play(episode_sampling(1.5, seed=1, key="o2o/0/boil/0"))
    greedy = [play(None)]

    def actions(report):
        return [(s.subgoal, s.action) for s in report.steps]

    assert actions(again) == actions(first) and len(first.steps) == 6
    assert actions(other) != actions(first)
    assert greedy[0].sampling is None  # the server's own settings: nothing sent, nothing recorded
    recorded = {t.id: t for t in trajectories_from_logs(vllm_server.record_dir, include_open=True)}
    assert recorded[f"server/{first.episode_id}"].sampling == first.sampling
    assert recorded[f"server/{greedy[0].episode_id}"].sampling is None
