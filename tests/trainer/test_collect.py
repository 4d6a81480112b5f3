"""Expert collection from TextWorld walkthroughs, and `glider data build` on collected data."""

from __future__ import annotations

import json

from glider.clients.cli import app
from glider.trainer.data.collect import collect, load_collected
from glider.trainer.data.hierarchy import annotate, high_level_transitions
from typer.testing import CliRunner


def test_textworld_walkthrough_collection(tmp_path):
    counts = collect(tmp_path / "expert", env="textworld", tasks=["tw-cooking"], per_task=1, workers=1,
                     games_dir=tmp_path / "games", progress=False)
    assert counts["played"] == 1
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
    assert len(dl) == 10 and sum(r["reward"] for r in dl) == 3  # three subgoals completed
    assert (out / "validation" / "dh.jsonl").read_text() == ""
    missing = CliRunner().invoke(app, ["data", "build", "--out", str(out), "--source", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "glider data collect" in missing.output
    bad = CliRunner().invoke(app, ["data", "build", "--out", str(out), "--source", str(expert_root),
                                   "--annotator", "llm"])
    assert bad.exit_code == 2 and "--llm-url" in bad.output
