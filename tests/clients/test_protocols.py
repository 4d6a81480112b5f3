"""The committed plan files against the papers' sources and ScienceWorld's own splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from glider.clients.envs.scienceworld import TASK_FAMILIES
from glider.clients.protocols import (
    SOURCES_DIR,
    Plan,
    PlannedEpisode,
    build_eto_plan,
    build_glider_plan,
    build_tune_plan,
    eto_task_name,
    glider_counts,
    load_plan,
    scienceworld_variations,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "eval-protocols"


@pytest.fixture(scope="module")
def variations():
    return scienceworld_variations(sorted(set(glider_counts()) | {e.task for e in load_plan("eto").episodes}),
                                   splits=("seen", "unseen", "train"))


def test_sources_are_the_papers_files():
    if not SHARED.is_dir():
        pytest.skip("the papers' reference folder (../shared/eval-protocols) is not beside this checkout")
    for name in ("glider_task_nums.csv", "eto_dev_indices.json", "eto_test_indices.json", "eto_max_steps.json"):
        assert (SOURCES_DIR / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_glider_plan_matches_the_csv_counts():
    plan, counts = load_plan("glider"), glider_counts()
    assert len(counts) == 24 and "measure-melting-point-known-substance" in counts
    assert {"inclined-plane-determine-angle", "mendelian-genetics-known-plant"}.isdisjoint(counts)
    got = plan.counts()
    for task, n in counts.items():
        assert got.get(("seen", task), 0) == n["seen"] and got.get(("unseen", task), 0) == n["unseen"], task
    assert sum(1 for e in plan.episodes if e.split == "seen") == 195
    assert sum(1 for e in plan.episodes if e.split == "unseen") == 211
    assert (plan.scoring, plan.aggregate, plan.simplification, plan.steps_for("boil")) == ("final", "macro", "", 50)


def test_glider_plan_uses_only_dev_and_test_variations_and_is_reproducible(variations):
    plan = load_plan("glider")
    for e in plan.episodes:
        assert e.variation in variations[(e.split, e.task)], e
    assert build_glider_plan(variations, seed=0).to_json() == plan.to_json()  # the committed draw
    assert build_glider_plan(variations, seed=1).to_json() != plan.to_json()


def test_eto_lists_map_to_scienceworld_names_and_splits(variations):
    plan = load_plan("eto")
    assert plan.to_json() == build_eto_plan().to_json()
    assert sum(1 for e in plan.episodes if e.split == "seen") == 194
    assert sum(1 for e in plan.episodes if e.split == "unseen") == 211
    assert {e.task for e in plan.episodes} <= set(TASK_FAMILIES) and len({e.task for e in plan.episodes}) == 24
    for e in plan.episodes:
        assert e.variation in variations[(e.split, e.task)], e
    assert (plan.scoring, plan.aggregate, plan.simplification) == ("best", "micro", "easy")
    assert plan.steps_for("boil") == 100 and plan.steps_for("find-plant") == 15
    assert plan.steps_for("lifespan-longest-lived-then-shortest-lived") == 12
    assert eto_task_name("task-10-measure-melting-point-(known-substance)") == "measure-melting-point-known-substance"
    assert eto_task_name("task-2a-test-conductivity") == "test-conductivity"
    assert set(json.loads((SOURCES_DIR / "eto_max_steps.json").read_text())) == {
        t for t, _ in json.loads((SOURCES_DIR / "eto_dev_indices.json").read_text())}


def test_quick_plans_are_cut_from_the_glider_plan():
    glider, quick, ci = load_plan("glider"), load_plan("quick"), load_plan("quick-ci")
    assert len(quick.episodes) == 48 and len(set(quick.counts())) == 48
    assert set(quick.episodes) <= set(glider.episodes) and set(ci.episodes) <= set(quick.episodes)
    assert len(ci.episodes) == 6 and ci.steps_for("find-plant") == 10
    assert quick.protocol == "quick" and ci.protocol == "quick-ci" and quick.scoring == "final"


def test_a_plan_restricted_to_one_split_keeps_its_episodes_and_scoring_and_names_the_split():
    glider = load_plan("glider")
    unseen = glider.only(["unseen"])
    assert unseen.protocol == "glider-unseen" and unseen.splits == ["unseen"]
    assert unseen.episodes == [e for e in glider.episodes if e.split == "unseen"] and len(unseen.episodes) == 211
    assert (unseen.scoring, unseen.aggregate, unseen.max_steps) == (glider.scoring, glider.aggregate, glider.max_steps)
    assert glider.only(["unseen", "seen"]) is glider
    with pytest.raises(ValueError, match="splits"):
        unseen.only(["seen"])


def test_tune_plan_touches_no_reported_episode_and_no_training_variation(variations):
    from glider.trainer.data.collect import recipe_counts, spread
    from glider.trainer.data.hierarchy import is_held_out
    from glider.trainer.pipeline import full_recipe_variations

    tune, glider = load_plan("tune"), load_plan("glider")
    collected, held_out = full_recipe_variations({t: v for (s, t), v in variations.items() if s == "train"})
    assert build_tune_plan(variations, glider, collected, held_out).to_json() == tune.to_json()  # the committed draw
    assert set(tune.episodes).isdisjoint(glider.episodes) and tune.splits == ["seen", "train"]
    assert max(tune.counts().values()) == 4 and len({e.task for e in tune.episodes}) >= 20
    counts = recipe_counts("glider")
    for e in tune.episodes:
        assert e.variation in variations[(e.split if e.split == "train" else "seen", e.task)], e
        if e.split == "train" and e.variation in spread(variations[("train", e.task)], counts.get(e.task, 0)):
            # a variation the full recipe collects is only ever one it keeps out of training
            assert is_held_out(f"scienceworld/{e.task}/train/{e.variation}", 0.1), e


def test_plan_files_round_trip_and_refuse_duplicates(tmp_path):
    plan = load_plan("eto")
    assert Plan.from_json(plan.to_json()) == plan
    path = tmp_path / "mine.json"
    path.write_text(plan.cut("mine", per_cell=2).to_json())
    assert load_plan(path).protocol == "mine" and len(load_plan(path).episodes) == 96
    with pytest.raises(ValueError, match="twice"):
        Plan(protocol="x", episodes=[PlannedEpisode("seen", "boil", 1)] * 2)
    with pytest.raises(ValueError, match="unknown protocol"):
        load_plan("glider-2")
