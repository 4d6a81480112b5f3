"""The evaluation harness on a short real run: table, CSV, plot, learning curve over versions."""

from __future__ import annotations

import csv
import json

import pytest
from glider.clients.cli import app
from glider.clients.evaluate import EvalConfig, plan_episodes, run_episodes, summarize, write_report
from typer.testing import CliRunner

pytestmark = pytest.mark.integration


def test_episode_plan_is_drawn_from_the_seed():
    cfg = EvalConfig(tasks=["boil", "find-plant"], episodes_per_task=2, seed=3)
    plan = plan_episodes(cfg)
    assert plan == plan_episodes(cfg)
    assert len(plan) == 8 and {s for s, _, _ in plan} == {"seen", "unseen"}
    assert plan != plan_episodes(EvalConfig(tasks=["boil", "find-plant"], episodes_per_task=2, seed=4))


def test_short_real_run_writes_table_csv_and_plot(vllm_server, tmp_path):
    cfg = EvalConfig(server=vllm_server.grpc_target, transport="grpc", tasks=["find-plant", "boil"],
                     episodes_per_task=1, max_steps=3, parallel=2)
    results = run_episodes(cfg)
    assert len(results) == 4 and {(r.split, r.task) for r in results} == {
        ("seen", "find-plant"), ("unseen", "find-plant"), ("seen", "boil"), ("unseen", "boil")}
    assert all(r.steps <= 3 and 0.0 <= r.score <= r.best or r.score == r.best for r in results)
    summary = write_report(results, tmp_path, label="short")
    table = (tmp_path / "table.md").read_text()
    assert "| find-plant |" in table and "overall (macro)" in table and "seen | unseen" in table
    rows = list(csv.DictReader((tmp_path / "episodes.csv").open()))
    assert len(rows) == 4
    # the overall figure is the mean over task families of each family's mean score ×100
    for split in ("seen", "unseen"):
        per_task = [100 * float(r["score"]) for r in rows if r["split"] == split]
        assert summary["overall"][split]["macro"] == pytest.approx(sum(per_task) / len(per_task))
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "summary.json").read_text())["label"] == "short"


def test_macro_average_is_per_family_first():
    from glider.clients.evaluate import EpisodeResult

    rs = [EpisodeResult("seen", "a", 0, 1.0, 1.0, 5, 1, True), EpisodeResult("seen", "a", 1, 0.0, 0.5, 5, 1, False),
          EpisodeResult("seen", "a", 2, 0.0, 0.0, 5, 1, False), EpisodeResult("seen", "b", 0, 0.5, 0.5, 5, 1, True)]
    s = summarize(rs)
    assert s["per_task"]["a"]["seen"] == pytest.approx(100 / 3)
    assert s["overall"]["seen"]["macro"] == pytest.approx((100 / 3 + 50) / 2)
    assert s["overall"]["seen"]["micro"] == pytest.approx(150 / 4)
    assert s["overall"]["seen"]["best_micro"] == pytest.approx(200 / 4)


def test_eval_command_learning_curve_over_versions(swap_server, tmp_path, monkeypatch):
    import httpx

    from tests.conftest import ADMIN_TOKEN

    monkeypatch.setenv("GLIDER_ADMIN_TOKEN", ADMIN_TOKEN)
    served = httpx.get(f"{swap_server.url}/readyz").json()["adapters"]
    spec = "+".join(f"{name}={version}" for name, version in sorted(served.items()))
    result = CliRunner().invoke(app, [
        "eval", "--out", str(tmp_path), "--server", swap_server.grpc_target, "--tasks", "find-plant",
        "--episodes", "1", "--splits", "seen", "--max-steps", "2", "--parallel", "1",
        "--checkpoints", f"{spec},{spec}", "--admin-url", swap_server.url])
    assert result.exit_code == 0, result.output
    curve = list(csv.reader((tmp_path / "curve.csv").open()))
    assert curve[0] == ["checkpoint", "seen"] and [row[0] for row in curve[1:]] == [spec, spec]
    assert (tmp_path / "curve.png").is_file()
    assert len(list(tmp_path.glob("*/table.md"))) == 1  # both points wrote to the checkpoint's directory
    assert httpx.get(f"{swap_server.url}/readyz").json()["adapters"] == served  # left as it was
    bad = CliRunner().invoke(app, ["eval", "--out", str(tmp_path), "--splits", "train"])
    assert bad.exit_code == 2 and "seen and/or unseen" in bad.output
