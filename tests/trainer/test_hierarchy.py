"""Segmentation and D^h / D^l construction on a real gold trajectory, against hand-computed values."""

from __future__ import annotations

import json

import httpx
import pytest
from glider.trainer.data.hierarchy import (
    LLMAnnotator,
    SegmentationConfig,
    TemplateAnnotator,
    annotate,
    flat_transitions,
    high_level_transitions,
    low_level_transitions,
    segment,
    split_by_group,
    write_datasets,
)
from glider.trainer.data.schema import Step, Trajectory

# find-plant's gold path (train variation 0): which plant it is varies between runs
# (ScienceWorld's unseeded simulator), the path's shape and rewards do not.
#   0 open door to greenhouse +0.08 | 1 go to greenhouse +0.09 | 2 look around
#   3 focus on adult <plant> +0.50  | 4 pick up flower pot +0.08 | 5-7 open/go hallway, open kitchen
#   8 go to kitchen +0.08           | 9 move flower pot ... to red box +0.17  (score 1.0, done)
GOLD_REWARDS = [0.08, 0.09, 0.0, 0.5, 0.08, 0.0, 0.0, 0.0, 0.08, 0.17]


def test_collected_gold_path_is_the_known_one(gold_trajectory, expert_root):
    from glider.trainer.data.collect import collect

    t = gold_trajectory
    assert t.task_name == "find-plant" and t.split == "train" and t.source == "gold"
    assert [s.reward for s in t.steps] == pytest.approx(GOLD_REWARDS)
    assert t.steps[-1].score == pytest.approx(1.0) and t.steps[-1].done
    assert t.steps[3].action.startswith("focus on")
    assert t.final_observation
    # resumable: a second collection finds it cached and plays nothing
    again = collect(expert_root, tasks=["find-plant"], per_task=1, workers=1, progress=False)
    assert again == {"played": 0, "cached": 1, "steps": 0}


def test_score_segmentation_on_the_gold_path(gold_trajectory):
    # cuts after each rewarded step: [0] [1] [2,3] [4] [5..8] [9]; segments shorter than
    # 2 merge into the next, the 1-step tail into its predecessor
    assert segment(gold_trajectory) == [(0, 2), (2, 4), (4, 10)]
    assert segment(gold_trajectory, SegmentationConfig(min_len=1)) == [
        (0, 1), (1, 2), (2, 4), (4, 5), (5, 9), (9, 10)]
    # the serve-time step budget: no segment longer than c_max
    assert segment(gold_trajectory, SegmentationConfig(max_len=4)) == [(0, 2), (2, 4), (4, 7), (7, 10)]
    assert segment(gold_trajectory, SegmentationConfig(method="fixed", max_len=5)) == [(0, 5), (5, 10)]


def test_high_and_low_level_transitions_on_the_gold_path(gold_trajectory):
    ep = annotate(gold_trajectory)
    assert [s.subgoal for s in ep.segments][0] == "go to greenhouse"
    assert ep.segments[1].subgoal.startswith("focus on adult")  # "look around" says nothing
    dh = high_level_transitions(ep)
    assert [round(r["reward"], 6) for r in dh] == [0.17, 0.5, 0.33]  # Σ r over each segment
    assert sum(r["reward"] for r in dh) == pytest.approx(gold_trajectory.steps[-1].score)
    assert dh[1]["observation"] == gold_trajectory.steps[2].observation  # o_t at the segment's start
    assert dh[1]["next_observation"] == gold_trajectory.steps[4].observation  # o_{t+c}
    assert dh[2]["next_observation"] == gold_trajectory.final_observation
    assert dh[2]["context"] == [ep.segments[0].subgoal, ep.segments[1].subgoal]
    assert [r["done"] for r in dh] == [False, False, True]

    dl = low_level_transitions(ep)
    assert len(dl) == 10
    # intrinsic reward r̂ = 1 exactly on the step that completes its subgoal
    assert [r["reward"] for r in dl] == [0, 1, 0, 1, 0, 0, 0, 0, 0, 1]
    assert [r["subgoal_done"] for r in dl] == [False, True, False, True] + [False] * 5 + [True]
    assert [r["env_reward"] for r in dl] == pytest.approx(GOLD_REWARDS)
    assert all(r["next_observation"] == gold_trajectory.steps[r["t"] + 1].observation for r in dl[:-1])
    assert dl[5]["subgoal"] == ep.segments[2].subgoal and dl[5]["history"] == 1

    flat = flat_transitions(gold_trajectory)
    assert [r["action"] for r in flat] == [s.action for s in gold_trajectory.steps]
    assert "subgoal" not in flat[0]


def test_template_annotator_names_destination_and_objects():
    ann = TemplateAnnotator()
    assert ann("t", ["open door to kitchen", "go to kitchen", "pick up thermometer"]) == \
        "go to kitchen, then pick up thermometer"
    # a run of moves collapses to where it ends; order of events is kept
    assert ann("t", ["pick up pot", "go to hallway", "open door to kitchen", "go to kitchen", "move pot to sink"]) \
        == "pick up pot, then go to kitchen, then move pot to sink"
    assert ann("t", ["wait1", "wait1"]) == "wait1"
    assert ann("t", ["look around"]) == "look around"


def _traj(rewards, subgoals=None, variation=0, task="boil"):
    steps = [Step(observation=f"o{i}", action=f"a{i}", reward=r, subgoal=(subgoals or [None] * len(rewards))[i])
             for i, r in enumerate(rewards)]
    return Trajectory(id=f"x/{task}/{variation}", task_name=task, variation=variation, task="do it", steps=steps,
                      final_observation="end")


def test_recorded_segmentation_follows_the_servers_subgoals():
    traj = _traj([0, 0, 0.5, 0, 0], subgoals=["g1", "g1", "g1", "g2", "g2"])
    assert segment(traj) == [(0, 3), (3, 5)]  # auto: recorded when every step has one
    ep = annotate(traj)
    assert [s.subgoal for s in ep.segments] == ["g1", "g2"]
    assert segment(traj, SegmentationConfig(method="score")) == [(0, 3), (3, 5)]


def test_split_is_by_variation_never_by_step():
    trajs = [_traj([0.1] * 3, variation=v) for v in range(40)]
    train, val = split_by_group(trajs, 0.25, seed=0)
    assert len(train) + len(val) == 40 and 0 < len(val) < 40
    assert not {t.group for t in train} & {t.group for t in val}
    assert split_by_group(trajs, 0.25, seed=0)[1] == val  # stable


def test_write_datasets_files_and_counts(tmp_path, gold_trajectory):
    counts = write_datasets(tmp_path, {"train": [annotate(gold_trajectory)]})
    assert counts["train"] == {"trajectories": 1, "segments": 1, "dh": 3, "dl": 10, "flat": 10}
    dh = [json.loads(line) for line in (tmp_path / "train" / "dh.jsonl").read_text().splitlines()]
    assert [round(r["reward"], 6) for r in dh] == [0.17, 0.5, 0.33]
    back = Trajectory.model_validate_json((tmp_path / "train" / "trajectories.jsonl").read_text().splitlines()[0])
    assert back == gold_trajectory


def test_llm_annotator_speaks_openai_chat_and_falls_back():
    seen = []
    answers = iter(["navigate to the kitchen and take the thermometer\n", "line one\nline two", "x"])

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        return httpx.Response(200, json={"choices": [{"message": {"content": next(answers)}}]})

    client = httpx.Client(base_url="http://annotator/v1", transport=httpx.MockTransport(handler))
    ann = LLMAnnotator("http://annotator/v1", "some-model", client=client)
    actions = ["open door to kitchen", "go to kitchen", "pick up thermometer"]
    assert ann("boil water", actions) == "navigate to the kitchen and take the thermometer"
    path, body = seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "some-model"
    assert "open door to kitchen; go to kitchen; pick up thermometer" in body["messages"][-1]["content"]
    assert ann("boil water", actions) == "navigate to the kitchen and take the thermometer"  # cached
    assert len(seen) == 1
    # two lines, then too short: both replaced by the template's text
    assert ann("t", ["go to hallway", "pick up pot"]) == "go to hallway, then pick up pot"
    assert ann("t", ["activate stove"]) == "activate stove"
    assert ann.fallbacks == 2
