"""Segmentation and D^h / D^l construction on a real gold trajectory, against hand-computed values."""

from __future__ import annotations

import json

import httpx
import pytest
from glider.trainer.data.hierarchy import (
    IntrinsicReward,
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
    assert (again.played, again.cached, again.steps) == (0, 1, 0)


def test_event_segmentation_on_the_gold_path(gold_trajectory):
    # [0,1] the way to the greenhouse | [2,3] look around, focus on the plant | [4] pick up the pot |
    # [5..8] the way to the kitchen | [9] move the pot to the red box: each ends where its goal is reached
    assert segment(gold_trajectory) == [(0, 2, True), (2, 4, True), (4, 5, True), (5, 9, True), (9, 10, True)]
    # a long way is cut where it arrives somewhere (a goal reached): still all complete
    assert segment(gold_trajectory, SegmentationConfig(max_len=2)) == [
        (0, 2, True), (2, 4, True), (4, 5, True), (5, 7, True), (7, 9, True), (9, 10, True)]


def test_score_segmentation_on_the_gold_path(gold_trajectory):
    # cuts after each rewarded step: [0] [1] [2,3] [4] [5..8] [9]; segments shorter than
    # 2 merge into the next, the 1-step tail into its predecessor
    score = SegmentationConfig(method="score")
    assert segment(gold_trajectory, score) == [(0, 2, True), (2, 4, True), (4, 10, True)]
    assert segment(gold_trajectory, SegmentationConfig(method="score", min_len=1)) == [
        (0, 1, True), (1, 2, True), (2, 4, True), (4, 5, True), (5, 9, True), (9, 10, True)]
    # the serve-time step budget: no segment longer than c_max; a piece cut short completed nothing
    assert segment(gold_trajectory, SegmentationConfig(method="score", max_len=4)) == [
        (0, 2, True), (2, 4, True), (4, 7, False), (7, 10, True)]
    assert segment(gold_trajectory, SegmentationConfig(method="fixed", max_len=5)) == [(0, 5, False), (5, 10, False)]


def _actions_traj(actions, rewards=None):
    rewards = rewards or [0.0] * len(actions)
    return Trajectory(id="x/t/0", task_name="t", task="do it", source="gold", final_observation="end",
                      steps=[Step(observation=f"o{i}", action=a, reward=r)
                             for i, (a, r) in enumerate(zip(actions, rewards, strict=True))])


def test_a_segment_cut_short_is_never_labelled_done():
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.sequences import executor_pairs

    # eleven looks before the key action: longer than c_max, so cut in two; only the second reaches its goal
    traj = _actions_traj([f"look at thing {i}" for i in range(11)] + ["focus on red box"])
    assert segment(traj, SegmentationConfig(max_len=10)) == [(0, 6, False), (6, 12, True)]
    ep = annotate(traj, cfg=SegmentationConfig(max_len=10))
    dl = low_level_transitions(ep)
    assert [r["t"] for r in dl if r["subgoal_done"]] == [11]
    kappa = IntrinsicReward().step_cost  # r̂: the cut piece completed nothing, each step costs κ
    assert [r["reward"] for r in dl if r["t"] in (5, 11)] == pytest.approx([-kappa, 1.0 - kappa])
    targets = [p.target for seg in executor_pairs(ep, HierarchyConfig()) for p in seg]
    assert targets[5] == " look at thing 5; false\n" and targets[11] == " focus on red box; true\n"
    assert sum(t.endswith("; true\n") for t in targets) == 1
    # a long walk is cut at an arrival, which completes "go to ..."
    walk = _actions_traj([a for r in range(6) for a in (f"open door to room {r}", f"go to room {r}")])
    assert segment(walk, SegmentationConfig(max_len=5)) == [(0, 4, True), (4, 8, True), (8, 12, True)]
    assert [s.subgoal for s in annotate(walk, cfg=SegmentationConfig(max_len=5)).segments] == [
        "go to the room 1", "go to the room 3", "go to the room 5"]


#: boil, train variation 0, the first 17 steps of its gold path and their score rises
BOIL_GOLD = [("open door to kitchen", 0), ("go to kitchen", 0), ("look around", 0), ("pick up thermometer", 0),
             ("open cupboard", 0), ("pick up metal pot", 0), ("look around", 0), ("move metal pot to sink", 0),
             ("activate sink", 0.03), ("deactivate sink", 0), ("pick up metal pot", 0),
             ("focus on substance in metal pot", 0.67), ("pour metal pot into metal pot", 0),
             ("pick up metal pot", 0), ("move metal pot to stove", 0.02), ("activate stove", 0.01),
             ("examine substance in metal pot", 0), ("use thermometer in inventory on substance in metal pot", 0)]


def test_template_annotator_names_the_goal_of_a_recorded_gold_path():
    traj = _actions_traj([a for a, _ in BOIL_GOLD], [r for _, r in BOIL_GOLD])
    ep = annotate(traj)
    assert [(seg.start, seg.end, seg.subgoal) for seg in ep.segments] == [
        (0, 2, "go to the kitchen"), (2, 4, "get the thermometer"), (4, 6, "get the metal pot"),
        (6, 8, "put the metal pot in the sink"), (8, 9, "turn on the sink"), (9, 10, "turn off the sink"),
        (10, 11, "get the metal pot"), (11, 12, "focus on the substance"),
        (12, 13, "pour the metal pot into the metal pot"), (13, 14, "get the metal pot"),
        (14, 15, "put the metal pot in the stove"), (15, 16, "turn on the stove"),
        (16, 18, "measure the temperature of the substance")]
    for seg in ep.segments:  # a goal in one short clause, never an action copied word for word
        assert len(seg.subgoal.split()) <= 8
        assert seg.subgoal not in [s.action for s in seg.steps(traj)]


def test_high_and_low_level_transitions_on_the_gold_path(gold_trajectory):
    ep = annotate(gold_trajectory)
    subgoals = [s.subgoal for s in ep.segments]
    assert subgoals[0] == "go to the greenhouse" and subgoals[1].startswith("focus on the adult")
    assert subgoals[2].startswith("get the flower pot") and subgoals[3] == "go to the kitchen"
    assert subgoals[4].startswith("put the") and subgoals[4].endswith("in the red box")
    dh = high_level_transitions(ep)
    assert [round(r["reward"], 6) for r in dh] == [0.17, 0.5, 0.08, 0.08, 0.17]  # Σ r over each segment
    assert sum(r["reward"] for r in dh) == pytest.approx(gold_trajectory.steps[-1].score)
    assert dh[1]["observation"] == gold_trajectory.steps[2].observation  # o_t at the segment's start
    assert dh[1]["next_observation"] == gold_trajectory.steps[4].observation  # o_{t+c}
    assert dh[4]["next_observation"] == gold_trajectory.final_observation
    assert dh[2]["context"] == subgoals[:2]
    assert [r["done"] for r in dh] == [False, False, False, False, True]

    dl = low_level_transitions(ep)
    assert len(dl) == 10
    # intrinsic reward r̂: 1 exactly on the step that completes its subgoal, −κ on every step
    assert [r["reward"] for r in low_level_transitions(ep, IntrinsicReward(step_cost=0.0))] == [
        0, 1, 0, 1, 1, 0, 0, 0, 1, 1]
    assert [r["reward"] for r in dl] == pytest.approx([x - IntrinsicReward().step_cost
                                                        for x in [0, 1, 0, 1, 1, 0, 0, 0, 1, 1]])
    assert [r["subgoal_done"] for r in dl] == [False, True, False, True, True, False, False, False, True, True]
    assert [r["env_reward"] for r in dl] == pytest.approx(GOLD_REWARDS)
    assert all(r["next_observation"] == gold_trajectory.steps[r["t"] + 1].observation for r in dl[:-1])
    assert dl[6]["subgoal"] == ep.segments[3].subgoal and dl[6]["history"] == 1

    flat = flat_transitions(gold_trajectory)
    assert [r["action"] for r in flat] == [s.action for s in gold_trajectory.steps]
    assert "subgoal" not in flat[0]


def test_template_annotator_names_destination_and_objects():
    ann = TemplateAnnotator()
    assert ann("t", ["open door to kitchen", "go to kitchen"]) == "go to the kitchen"
    assert ann("t", ["pick up pot", "go to hallway", "open door to kitchen", "go to kitchen", "move pot to sink"]) \
        == "put the pot in the sink"
    assert ann("t", ["pour cup containing blue paint in art studio in jug"]) == "pour the blue paint into the jug"
    assert ann("t", ["move egg turtle egg in inventory to purple box"]) == "put the turtle egg in the purple box"
    assert ann("t", ["use thermometer in inventory on chocolate"]) == "measure the temperature of the chocolate"
    assert ann("t", ["wait1", "wait1"]) == "wait for a while"
    assert ann("t", ["focus on butterfly", "look around"]) == "focus on the butterfly"  # a look names nothing
    assert ann("t", ["look around"]) == "look around the room"
    assert ann("t", []) == "explore the surroundings"


def _traj(rewards, subgoals=None, variation=0, task="boil"):
    steps = [Step(observation=f"o{i}", action=f"a{i}", reward=r, subgoal=(subgoals or [None] * len(rewards))[i])
             for i, r in enumerate(rewards)]
    return Trajectory(id=f"x/{task}/{variation}", task_name=task, variation=variation, task="do it", steps=steps,
                      final_observation="end")


def test_recorded_segmentation_follows_the_servers_subgoals():
    traj = _traj([0, 0, 0.5, 0, 0], subgoals=["g1", "g1", "g1", "g2", "g2"])
    # auto: recorded when every step has one; a recorded subgoal is complete only if the executor said so
    assert segment(traj) == [(0, 3, False), (3, 5, False)]
    ep = annotate(traj)
    assert [s.subgoal for s in ep.segments] == ["g1", "g2"]
    assert segment(traj, SegmentationConfig(method="score")) == [(0, 3, True), (3, 5, True)]
    traj.steps[2].subgoal_done = True
    assert segment(traj) == [(0, 3, True), (3, 5, False)]


def test_split_is_by_variation_never_by_step():
    trajs = [_traj([0.1] * 3, variation=v) for v in range(40)]
    train, val = split_by_group(trajs, 0.25, seed=0)
    assert len(train) + len(val) == 40 and 0 < len(val) < 40
    assert not {t.group for t in train} & {t.group for t in val}
    assert split_by_group(trajs, 0.25, seed=0)[1] == val  # stable


def test_write_datasets_files_and_counts(tmp_path, gold_trajectory):
    counts = write_datasets(tmp_path, {"train": [annotate(gold_trajectory)]})
    assert counts["train"] == {"trajectories": 1, "segments": 1, "dh": 5, "dl": 10, "flat": 10}
    dh = [json.loads(line) for line in (tmp_path / "train" / "dh.jsonl").read_text().splitlines()]
    assert [round(r["reward"], 6) for r in dh] == [0.17, 0.5, 0.08, 0.08, 0.17]
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
    assert ann("t", ["go to hallway", "pick up pot"]) == "get the pot"
    assert ann("t", ["activate stove"]) == "turn on the stove"
    assert ann.fallbacks == 2
