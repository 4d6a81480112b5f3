"""The evaluation harness end to end on the real server: the quick-ci plan, resume, transcripts, compare."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from glider.clients.cli import app
from glider.clients.evaluate import (
    EpisodeResult,
    EvalConfig,
    Summary,
    load_run,
    run_episodes,
    summarize,
    table_markdown,
    write_report,
)
from glider.clients.protocols import PlannedEpisode, load_plan
from typer.testing import CliRunner

pytestmark = pytest.mark.integration


def test_quick_ci_protocol_end_to_end_resumes_and_compares(vllm_server, tmp_path):
    plan = load_plan("quick-ci")
    run = tmp_path / "a"
    cfg = EvalConfig(plan=plan, server=vllm_server.grpc_target, transport="grpc", parallel=3)
    first = run_episodes(cfg, out=run)
    assert [r.key for r in first] == [e.key for e in plan.episodes]
    assert all(r.steps <= 10 and 0.0 <= r.score <= 1 and r.score <= r.best or r.done for r in first)
    for e in plan.episodes:
        text = (run / "transcripts" / e.split / e.task / f"{e.variation}.md").read_text()
        assert text.startswith(f"# {e.task}, variation {e.variation} ({e.split})") and "## Subgoal:" in text

    played = []
    again = run_episodes(cfg, out=run, on_done=played.append)  # a finished run resumes to nothing
    assert played == [] and again == first
    with pytest.raises(ValueError, match="another plan"):
        run_episodes(EvalConfig(plan=load_plan("quick")), out=run)

    summary = write_report(first, run, plan, label="ci")
    table = (run / "table.md").read_text()
    assert "protocol quick-ci" in table and "95 % CI" in table and "| find-plant |" in table
    for split in ("seen", "unseen"):
        o = summary.overall[split]
        scores = [100 * r.score for r in first if r.split == split]
        assert o.mean == pytest.approx(sum(scores) / len(scores))  # one episode per family: macro = micro
        assert o.low <= o.mean <= o.high and o.episodes == o.planned == 3
    assert Summary.load(run / "summary.json") == summary
    assert len(list(csv.DictReader((run / "episodes.csv").open()))) == 6
    assert (run / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same run against itself: a paired difference of exactly zero
    shutil.copytree(run, tmp_path / "b")
    result = CliRunner().invoke(app, ["eval", "compare", str(run), str(tmp_path / "b"),
                                      "--out", str(tmp_path / "cmp.json")])
    assert result.exit_code == 0, result.output
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert cmp["splits"]["seen"]["difference"] == 0 and cmp["splits"]["seen"]["episodes"] == 3
    assert "MDE" in result.output


def test_a_run_cut_off_midway_plays_only_what_is_missing(vllm_server, tmp_path):
    plan = load_plan("quick-ci")
    cfg = EvalConfig(plan=plan, server=vllm_server.url, transport="rest", parallel=2)
    done = run_episodes(cfg, out=tmp_path)
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    # keep the first two episodes and a line cut off by a crash, as a killed run leaves them
    (tmp_path / "episodes.jsonl").write_text("\n".join(lines[:2]) + '\n{"split": "se')
    played = []
    results = run_episodes(cfg, out=tmp_path, on_done=played.append)
    assert len(played) == 4 and {r.key for r in results} == {r.key for r in done}
    _, loaded = load_run(tmp_path)
    assert sorted(r.key for r in loaded) == sorted(e.key for e in plan.episodes)


def test_summary_is_per_family_first_with_a_ci():
    plan = load_plan("quick")
    rs = [EpisodeResult("seen", "a", 0, 1.0, 1.0, 5, 1, True), EpisodeResult("seen", "a", 1, 0.0, 0.5, 5, 1, False),
          EpisodeResult("seen", "a", 2, 0.0, 0.0, 5, 1, False), EpisodeResult("seen", "b", 0, 0.5, 0.5, 5, 1, True)]
    s = summarize(rs, plan)
    assert s.per_task["a"]["seen"] == pytest.approx(100 / 3)
    seen = s.overall["seen"]
    assert seen.mean == pytest.approx((100 / 3 + 50) / 2)
    assert seen.micro == pytest.approx(150 / 4)
    assert seen.best_micro == pytest.approx(200 / 4)
    assert seen.low < seen.mean < seen.high
    eto = summarize(rs, load_plan("eto"))  # ETO scores the best score reached, micro
    assert eto.overall["seen"].mean == pytest.approx(200 / 4)
    assert PlannedEpisode("seen", "a", 2).key == rs[2].key


def test_summary_reports_the_share_of_steps_that_fell_back_over_the_episodes_that_recorded_it():
    plan = load_plan("quick")
    recorded = [EpisodeResult("seen", "a", 0, 0.0, 0.0, 10, 1, False, fallback_steps=3),
                EpisodeResult("seen", "b", 0, 0.0, 0.0, 30, 1, False, fallback_steps=1)]
    older = EpisodeResult("seen", "a", 1, 0.0, 0.0, 50, 1, False)  # a row from before the count was kept
    assert summarize(recorded + [older], plan).overall["seen"].fallback_share == pytest.approx(4 / 40)
    only_older = summarize([older], plan)
    assert only_older.overall["seen"].fallback_share is None
    assert "| steps that fell back | – |" in table_markdown(only_older)
    assert "| steps that fell back | 10.0 % |" in table_markdown(summarize(recorded, plan))


def test_eval_command_learning_curve_over_versions(swap_server, tmp_path, monkeypatch):
    import httpx

    from tests.conftest import ADMIN_TOKEN

    monkeypatch.setenv("GLIDER_ADMIN_TOKEN", ADMIN_TOKEN)
    served = httpx.get(f"{swap_server.url}/readyz").json()["adapters"]
    spec = "+".join(f"{name}={version}" for name, version in sorted(served.items()))
    result = CliRunner().invoke(app, [
        "eval", "run", "--out", str(tmp_path), "--server", swap_server.grpc_target, "--protocol", "custom",
        "--tasks", "find-plant", "--episodes", "1", "--splits", "seen", "--max-steps", "2", "--parallel", "1",
        "--checkpoints", f"{spec},{spec}", "--admin-url", swap_server.url])
    assert result.exit_code == 0, result.output
    curve = list(csv.reader((tmp_path / "curve.csv").open()))
    assert curve[0] == ["checkpoint", "seen"] and [row[0] for row in curve[1:]] == [spec, spec]
    assert (tmp_path / "curve.png").is_file()
    assert len(list(tmp_path.glob("*/table.md"))) == 1  # both points wrote to the checkpoint's directory
    assert httpx.get(f"{swap_server.url}/readyz").json()["adapters"] == served  # left as it was
    bad = CliRunner().invoke(app, ["eval", "run", "--out", str(tmp_path), "--protocol", "custom",
                                   "--splits", "train"])
    assert bad.exit_code == 2 and "seen and/or unseen" in bad.output
    bad = CliRunner().invoke(app, ["eval", "run", "--out", str(tmp_path), "--protocol", "nope"])
    assert bad.exit_code == 2 and "unknown protocol" in bad.output


def test_gold_floor_replays_every_episode_and_an_environment_failure_is_played_again(monkeypatch, tmp_path):
    import glider.clients.evaluate as evaluate

    plan = load_plan("quick-ci")
    real, calls = evaluate.play_gold, []

    def flaky(world, max_steps, pad_to=None):
        calls.append(world.task_name)
        if len(calls) == 1:
            raise RuntimeError("the JVM went away")
        return real(world, max_steps, pad_to)

    monkeypatch.setattr(evaluate, "play_gold", flaky)
    pad = {e.key: 7 for e in plan.episodes}
    results = run_episodes(EvalConfig(plan=plan, policy="gold", parallel=2, pad_steps=pad), out=tmp_path)
    assert len(calls) == 7 and [r.key for r in results] == [e.key for e in plan.episodes]
    assert all(r.steps == 7 for r in results)  # gold path, then look around, to the served run's step count
    assert sum(r.best > 0 for r in results) >= 4  # the gold paths score

    def broken(world, max_steps, pad_to=None):
        raise RuntimeError("always")

    monkeypatch.setattr(evaluate, "play_gold", broken)
    with pytest.raises(RuntimeError, match="always"):
        run_episodes(EvalConfig(plan=plan, policy="gold", parallel=2), out=tmp_path / "b")
