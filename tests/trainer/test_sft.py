"""SFT on a tiny model: the loss falls, buckets keep padding low, checkpoints resume, adapters publish."""

from __future__ import annotations

import json

import pytest
from glider.trainer.sft import SFTConfig, run_sft
from glider.trainer.training import TrainConfig, bucket_batches


def test_bucketing_groups_similar_lengths_under_the_budget():
    lengths = [5, 100, 7, 98, 6, 101, 50, 52]
    batches = bucket_batches(lengths, batch_tokens=210, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 210 or len(b) == 1
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.05
    assert bucket_batches(lengths, 210, 0, 1) != batches or len(batches) == 1  # reshuffled per epoch
    assert bucket_batches(lengths, 210, 0, 0) == batches  # reproducible


def test_sft_loss_falls_and_publishes(tiny_model_dir, gold_trajectory, tmp_path):
    from glider.server.adapters.registry import AdapterRegistry

    cfg = SFTConfig(mode="separate", val_fraction=0.0,
                    train=TrainConfig(lr=3e-3, max_steps=150, batch_tokens=4096, log_every=10,
                                      checkpoint_every=50, progress=False, warmup_steps=10))
    cfg.lora.r, cfg.lora.alpha = 8, 16
    metrics = run_sft(tiny_model_dir, [gold_trajectory], tmp_path / "run", cfg, registry=tmp_path / "registry")
    for name in ("planner", "executor"):
        m = metrics["adapters"][name]
        assert m["steps"] == 150
        assert m["train_loss"] < 0.5 * m["first_loss"], m  # a clear margin, not noise
        assert 0 <= m["padding_share"] < 0.5
        version = AdapterRegistry(tmp_path / "registry").get(name)
        assert version.manifest["stage"] == "sft" and m["published"] == version.version
        assert (tmp_path / "run" / name / "tensorboard").is_dir()
    saved = json.loads((tmp_path / "run" / "sft_metrics.json").read_text())
    assert saved["adapters"]["executor"]["target_tokens"] > 0


def test_training_resumes_from_its_checkpoint(tiny_model_dir, gold_trajectory, tmp_path):
    cfg = SFTConfig(mode="flat", val_fraction=0.0,
                    train=TrainConfig(lr=3e-3, max_steps=6, batch_tokens=2048, checkpoint_every=3,
                                      log_every=1, progress=False))
    first = run_sft(tiny_model_dir, [gold_trajectory], tmp_path, cfg)["adapters"]["flat"]
    progress = json.loads((tmp_path / "flat" / "checkpoints" / "latest" / "progress.json").read_text())
    assert progress["step"] == 6
    # the same run again with a longer budget continues from step 6 instead of starting over
    cfg.train.max_steps = 9
    again = run_sft(tiny_model_dir, [gold_trajectory], tmp_path, cfg)["adapters"]["flat"]
    assert first["steps"] == 6 and again["steps"] == 9
    progress = json.loads((tmp_path / "flat" / "checkpoints" / "latest" / "progress.json").read_text())
    assert progress["step"] == 9
    # other data in the same directory: that checkpoint is not resumed, training starts over
    shorter = gold_trajectory.model_copy(update={"steps": gold_trajectory.steps[:5]})
    other = run_sft(tiny_model_dir, [shorter], tmp_path, cfg)["adapters"]["flat"]
    assert other["steps"] == 9 and other["first_loss"] > again["train_loss"]
    progress = json.loads((tmp_path / "flat" / "checkpoints" / "latest" / "progress.json").read_text())
    assert progress["step"] == 9 and progress["fingerprint"]


def test_unknown_mode_is_refused(tiny_model_dir, gold_trajectory, tmp_path):
    with pytest.raises(ValueError, match="unknown SFT mode"):
        run_sft(tiny_model_dir, [gold_trajectory], tmp_path, SFTConfig(mode="hierarchical"))


def test_recipe_knows_when_sft_adapters_are_current(tiny_model_dir, tmp_path):
    import shutil

    from glider.trainer.lora import create_adapter
    from glider.trainer.pipeline import recipe_tasks, sft_is_current
    from glider.trainer.publish import publish_adapter

    src = create_adapter(tiny_model_dir, tmp_path / "src")
    reg = tmp_path / "registry"
    assert not sft_is_current(reg, tiny_model_dir, ["planner"])  # nothing published
    publish_adapter(reg, "planner", src, tiny_model_dir, stage="init")
    assert not sft_is_current(reg, tiny_model_dir, ["planner"])  # untrained
    publish_adapter(reg, "planner", src, tiny_model_dir, stage="sft")
    assert sft_is_current(reg, tiny_model_dir, ["planner"])
    assert not sft_is_current(reg, tiny_model_dir, ["planner", "executor"])
    # another backbone (here: the same weights with another warm-up record) invalidates them
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    (other / "glider_backbone.json").write_text('{"warmup": {"data": "something else"}}')
    assert not sft_is_current(reg, other, ["planner"])
    assert "boil" in recipe_tasks() and not any(t.startswith("mendelian") for t in recipe_tasks())
