"""Expert collection from TextWorld walkthroughs, and `glider data build` on collected data."""

from __future__ import annotations

import json

import pytest
from glider.clients.cli import app
from glider.trainer.data.collect import collect, load_collected
from glider.trainer.data.hierarchy import IntrinsicReward, annotate, high_level_transitions
from typer.testing import CliRunner


def test_textworld_walkthrough_collection(tmp_path):
    counts = collect(tmp_path / "expert", env="textworld", tasks=["tw-cooking"], per_task=1, workers=1,
                     games_dir=tmp_path / "games", progress=False)
    assert counts.played == 1
    (traj,) = load_collected(tmp_path / "expert", env="textworld")
    assert traj.task_name == "tw-cooking" and traj.task
    # the walkthrough wins the game: the score reaches the maximum and the episode ends
    assert traj.steps[-1].score == 1.0 and traj.steps[-1].done
    assert sum(s.reward for s in traj.steps) == traj.steps[-1].score
    # score increments give subgoal boundaries here as in ScienceWorld
    ep = annotate(traj)
    assert len(ep.segments) >= 2
    assert sum(r["reward"] for r in high_level_transitions(ep)) == 1.0


def test_data_build_command_writes_the_datasets(expert_root, tmp_path):
    out = tmp_path / "datasets"
    result = CliRunner().invoke(app, ["data", "build", "--out", str(out), "--source", str(expert_root),
                                      "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    for name in ("trajectories", "segments", "dh", "dl", "flat"):
        assert (out / "train" / f"{name}.jsonl").is_file()
    dl = [json.loads(line) for line in (out / "train" / "dl.jsonl").read_text().splitlines()]
    # five subgoals completed (1 each), every one of the ten steps costing κ
    assert len(dl) == 10 and sum(r["subgoal_done"] for r in dl) == 5
    assert sum(r["reward"] for r in dl) == pytest.approx(5 - 10 * IntrinsicReward().step_cost)
    assert (out / "validation" / "dh.jsonl").read_text() == ""
    missing = CliRunner().invoke(app, ["data", "build", "--out", str(out), "--source", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "glider data collect" in missing.output
    bad = CliRunner().invoke(app, ["data", "build", "--out", str(out), "--source", str(expert_root),
                                   "--annotator", "llm"])
    assert bad.exit_code == 2 and "--llm-url" in bad.output


def test_perturbed_replays_take_detours_and_keep_real_rewards(tmp_path, expert_root, gold_trajectory):
    import random

    from glider.trainer.data.collect import PERTURB_KINDS, perturbed_action

    valid = ["connect agent to air", "go to kitchen", "open door to hallway", "look around", "focus on apple",
             "pick up apple", "eat apple"]
    draws = {perturbed_action(valid, random.Random(i)) for i in range(200)}
    assert draws == {a for a in valid if a.startswith(tuple(p for k in PERTURB_KINDS for p in k))}
    assert perturbed_action(["connect agent to air"], random.Random(0)) is None

    counts = collect(tmp_path / "perturbed", tasks=["find-plant"], per_task=1, workers=1, perturb=0.5,
                     max_steps=30, progress=False)
    assert counts.played == 1
    (traj,) = load_collected(tmp_path / "perturbed")
    assert traj.source == "perturbed-0.5" and traj.id.endswith("/perturbed-0.5")
    gold = [s.action for s in gold_trajectory.steps]
    detours = [s.action for s in traj.steps if s.action not in gold]
    assert detours, "ε = 0.5 takes random valid actions"
    # rewards are the environment's own score deltas, whatever the detours did
    score = traj.initial_score
    for step in traj.steps:
        assert step.reward == pytest.approx(step.score - score, abs=1e-6)
        score = step.score
    assert len(traj.steps) <= 30
    # the same replay again is cached, not replayed
    assert collect(tmp_path / "perturbed", tasks=["find-plant"], per_task=1, workers=1, perturb=0.5,
                   progress=False).cached == 1


def test_variations_are_taken_spread_over_the_split_and_loaded_alike(tmp_path):
    from glider.trainer.data.collect import (
        recipe_counts,
        spread,
        spread_order,
        trajectory_path,
        variations_path,
    )
    from glider.trainer.data.schema import Trajectory

    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (1, 5, 14, 120, 1000):
        assert sorted(spread_order(n)) == list(range(n))
    # a smaller recipe's variations are the first ones of a larger recipe's, and spread over the split
    split = list(range(100, 220))
    assert spread(split, 3) == [100, 160, 130] and set(spread(split, 3)) <= set(spread(split, 14))
    counts = recipe_counts("glider")
    assert sum(counts.values()) == 1284 and len(counts) == 23 and counts["find-plant"] == 120
    assert "measure-melting-point-known-substance" not in counts  # the paper had no training data for it
    with pytest.raises(ValueError, match="recipe"):
        recipe_counts("paper")
    # loading N per family picks the same spread the collection took, from the recorded variation lists
    root = tmp_path / "expert"
    lists = {"boil": list(range(0, 14)), "melt": list(range(50, 60))}
    variations_path(root, "scienceworld", "train").parent.mkdir(parents=True)
    variations_path(root, "scienceworld", "train").write_text(json.dumps(lists))
    for task, variations in lists.items():
        for v in variations:
            path = trajectory_path(root, "scienceworld", "train", task, v)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Trajectory(id=f"{task}/{v}", task_name=task, variation=v, task="t").model_dump_json())
    loaded = load_collected(root, per_task={"boil": 3, "melt": 2})
    assert [(t.task_name, t.variation) for t in loaded] == [("boil", 0), ("boil", 3), ("boil", 7), ("melt", 50),
                                                          ("melt", 55)]
    assert len(load_collected(root)) == 24
