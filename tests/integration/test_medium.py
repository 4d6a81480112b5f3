"""Medium-quality data as the paper makes it: SFT on half the train variations, the other half played
through a real server, the recorded episodes labelled with their variation."""

from __future__ import annotations

import pytest
from glider.trainer.data.hierarchy import is_held_out
from glider.trainer.medium import (
    MediumConfig,
    collect_medium,
    halves,
    label_trajectories,
    load_medium,
)
from glider.trainer.training import TrainConfig

pytestmark = pytest.mark.integration


def _variations(gold, n: int):
    """Copies of the find-plant gold path under n train variations (the policy's data; its content
    does not matter here, the variations do)."""
    return [gold.model_copy(update={"id": f"scienceworld/find-plant/train/{v}", "variation": v}) for v in range(n)]


def test_halves_never_share_a_variation(gold_trajectory):
    trajs = _variations(gold_trajectory, 40)
    train, play = halves(trajs, seed=1)
    assert train and play and len(train) + len(play) == 40
    assert not {t.variation for t in train} & {t.variation for t in play}
    assert {t.variation for t in play} == {v for v in range(40) if is_held_out(f"scienceworld/find-plant/train/{v}",
                                                                                0.5, 1)}


def test_recorded_episodes_are_labelled_with_their_variation(gold_trajectory):
    recorded = [gold_trajectory.model_copy(update={"id": "server/ep-1", "env": "server", "source": "server",
                                                   "variation": None}),
                gold_trajectory.model_copy(update={"id": "server/other", "env": "server", "source": "server"})]
    labelled = label_trajectories(recorded, {"ep-1": ("find-plant", 7)})
    assert len(labelled) == 1  # an episode this collection did not play is not its data
    t = labelled[0]
    assert (t.source, t.task_name, t.split, t.variation) == ("server", "find-plant", "train", 7)
    assert t.group == "scienceworld/find-plant/train/7"  # held out (or not) together with its expert path


def test_collect_medium_trains_on_one_half_and_records_the_other(tiny_model_dir, gold_trajectory, tmp_path):
    trajs = _variations(gold_trajectory, 4)
    train, play = halves(trajs, seed=1)
    assert train and play, "the test's variations must land in both halves"
    cfg = MediumConfig(sft=TrainConfig(lr=2e-3, max_steps=4, batch_tokens=2048, warmup_steps=1, progress=False,
                                       checkpoint_every=1000),
                       seeds=(0,), temperature=1.0, max_steps=4, parallel=2, backend="hf")
    report = collect_medium(tiny_model_dir, trajs, tmp_path / "medium", cfg, say=lambda _: None)

    assert report.trained_on == len(train) and report.played_variations == len(play)
    medium = load_medium(tmp_path / "medium")
    assert len(medium) == report.episodes == len(play)
    assert {t.variation for t in medium} == {t.variation for t in play}  # only the unseen half was played
    for t in medium:
        assert t.source == "server" and t.task_name == "find-plant" and 1 <= len(t.steps) <= 4
        assert t.sampling["temperature"] == 1.0 and t.sampling["seed"] > 0  # sampled, and replayable
    # resumable: a second call trains and plays nothing more
    again = collect_medium(tiny_model_dir, trajs, tmp_path / "medium", cfg, say=lambda msg: pytest.fail(msg)
                           if "SFT" in msg else None)
    assert again.episodes == report.episodes
