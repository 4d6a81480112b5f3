"""SFT on a tiny model: the loss falls, buckets keep padding low, checkpoints resume, adapters publish."""

from __future__ import annotations

import dataclasses
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
        m = metrics.adapters[name]
        assert m.training.steps == 150
        assert m.training.train_loss < 0.5 * m.training.first_loss, m  # a clear margin, not noise
        assert 0 <= m.training.padding_share < 0.5
        version = AdapterRegistry(tmp_path / "registry").get(name)
        assert version.manifest["stage"] == "sft" and m.published == version.version
        assert (tmp_path / "run" / name / "tensorboard").is_dir()
    saved = json.loads((tmp_path / "run" / "sft_metrics.json").read_text())
    assert saved["adapters"]["executor"]["target_tokens"] > 0
    # the file's layout: diagnostics only where they ran (not for the planner), the registry version last
    assert "completion_marker" not in saved["adapters"]["planner"]
    assert list(saved["adapters"]["planner"])[-1] == "published"


def test_training_resumes_from_its_checkpoint(tiny_model_dir, gold_trajectory, tmp_path):
    cfg = SFTConfig(mode="flat", val_fraction=0.0,
                    train=TrainConfig(lr=3e-3, max_steps=6, batch_tokens=2048, checkpoint_every=3,
                                      log_every=1, progress=False))
    first = run_sft(tiny_model_dir, [gold_trajectory], tmp_path, cfg).adapters["flat"].training
    progress = json.loads((tmp_path / "flat" / "checkpoints" / "latest" / "progress.json").read_text())
    assert progress["step"] == 6
    # the same run again with a longer budget continues from step 6 instead of starting over
    cfg.train.max_steps = 9
    again = run_sft(tiny_model_dir, [gold_trajectory], tmp_path, cfg).adapters["flat"].training
    assert first.steps == 6 and again.steps == 9
    progress = json.loads((tmp_path / "flat" / "checkpoints" / "latest" / "progress.json").read_text())
    assert progress["step"] == 9
    # other data in the same directory: that checkpoint is not resumed, training starts over
    shorter = gold_trajectory.model_copy(update={"steps": gold_trajectory.steps[:5]})
    other = run_sft(tiny_model_dir, [shorter], tmp_path, cfg).adapters["flat"].training
    assert other.steps == 9 and other.first_loss > again.train_loss
    progress = json.loads((tmp_path / "flat" / "checkpoints" / "latest" / "progress.json").read_text())
    assert progress["step"] == 9 and progress["fingerprint"]


def test_checkpoints_come_by_time_too(tiny_model_dir, gold_trajectory, tmp_path, monkeypatch):
    from glider.trainer.training import Checkpoints

    saves = []
    original = Checkpoints.save
    monkeypatch.setattr(Checkpoints, "save", lambda self, acc, progress, stopping: (
        saves.append(progress["step"]), original(self, acc, progress, stopping)))
    by_steps = TrainConfig(lr=3e-3, max_steps=4, batch_tokens=2048, checkpoint_every=1000, checkpoint_minutes=None,
                           log_every=1, progress=False)
    run_sft(tiny_model_dir, [gold_trajectory], tmp_path / "steps", SFTConfig(mode="flat", val_fraction=0.0,
                                                                              train=by_steps))
    assert saves == [4]  # only the final one: 1000 steps never come
    saves.clear()
    by_time = dataclasses.replace(by_steps, checkpoint_minutes=1e-9)  # every step is "minutes" after the last
    run_sft(tiny_model_dir, [gold_trajectory], tmp_path / "time", SFTConfig(mode="flat", val_fraction=0.0,
                                                                             train=by_time))
    assert saves == [1, 2, 3, 4, 4]


def test_a_resumed_run_keeps_the_time_box_of_the_whole_run(tiny_model_dir, gold_trajectory, tmp_path):
    cfg = SFTConfig(mode="flat", val_fraction=0.0,
                    train=TrainConfig(lr=3e-3, max_steps=6, batch_tokens=2048, checkpoint_every=3,
                                      log_every=1, progress=False))
    first = run_sft(tiny_model_dir, [gold_trajectory], tmp_path, cfg).adapters["flat"].training
    latest = tmp_path / "flat" / "checkpoints" / "latest" / "progress.json"
    progress = json.loads(latest.read_text())
    assert 0 < progress["seconds"] < 600
    # as if the first run had trained for 10 minutes before it was stopped: a 5-minute box is spent,
    # so the resumed run takes no further step instead of training 5 more minutes
    latest.write_text(json.dumps({**progress, "seconds": 600.0}))
    cfg.train.max_steps, cfg.train.max_minutes = 100, 5
    again = run_sft(tiny_model_dir, [gold_trajectory], tmp_path, cfg).adapters["flat"].training
    assert again.steps == 6 and again.stopped_early
    assert again.seconds >= 600  # the whole run's training time, both parts
    # and it reports the run's figures, not NaN loss and 0 tokens/s for the part that took no step
    assert again.train_loss == first.train_loss and again.first_loss == first.first_loss
    assert 0 < again.tokens_per_s < first.tokens_per_s  # the same tokens over the faked 600 s
    # with box left (10 minutes, 5 of them spent) it goes on from step 6
    latest.write_text(json.dumps({**json.loads(latest.read_text()), "seconds": 300.0}))
    cfg.train.max_steps, cfg.train.max_minutes = 8, 10
    more = run_sft(tiny_model_dir, [gold_trajectory], tmp_path, cfg).adapters["flat"].training
    assert more.steps == 8 and not more.stopped_early


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


def test_early_stopping_ends_on_the_best_held_out_weights(tiny_model_dir, gold_trajectory, tmp_path):
    from glider.trainer.training import evaluate_loss, train

    model, tok, seqs = _flat_lora(tiny_model_dir, gold_trajectory)
    # min_delta so large that nothing after the first measurement counts as better: patience 2 runs out
    # at the third measurement (step 6 of 40), and the model ends on the weights of the first (step 2)
    cfg = TrainConfig(lr=3e-3, max_steps=40, batch_tokens=2048, eval_every=2, patience=2, min_delta=100.0,
                      lr_reductions=0, log_every=1, progress=False)
    result = train(model, seqs, cfg, tmp_path, pad_id=tok.pad_token_id, val_sequences=seqs)
    assert result.stopped_early and result.steps == 6 and result.best_step == 2
    assert [c[0] for c in result.val_curve] == [2, 4, 6]
    assert result.val_curve[2][2] < result.val_curve[0][2]  # it was still learning: the rule, not the data, stopped it
    assert evaluate_loss(model, seqs, tok.pad_token_id) == pytest.approx(result.best_val_loss, rel=1e-5)
    assert (tmp_path / "val_curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "val_curve.json").read_text())
    assert saved["best"]["step"] == 2 and len(saved["curve"]) == 3


def test_a_plateau_lowers_the_rate_from_the_best_weights_before_stopping(tiny_model_dir, gold_trajectory, tmp_path):
    from glider.trainer.training import train

    model, tok, seqs = _flat_lora(tiny_model_dir, gold_trajectory)
    # nothing ever beats the first measurement by min_delta: two plateaus of patience 2 each lower the
    # rate (x0.5, x0.25) and the third ends the run: measurements at 2 (best), 4, 6 | 8, 10 | 12, 14
    cfg = TrainConfig(lr=3e-3, max_steps=40, batch_tokens=2048, eval_every=2, patience=2, min_delta=100.0,
                      lr_reductions=2, plateau_factor=0.5, warmup_steps=1, log_every=1, progress=False)
    result = train(model, seqs, cfg, tmp_path, pad_id=tok.pad_token_id, val_sequences=seqs)
    assert result.stopped_early and result.steps == 14 and result.best_step == 2
    saved = json.loads((tmp_path / "val_curve.json").read_text())
    assert saved["best"]["reductions"] == 2 and [c[0] for c in saved["curve"]] == [2, 4, 6, 8, 10, 12, 14]


def _flat_lora(tiny_model_dir, gold_trajectory):
    """A fresh LoRA on the tiny model and the gold trajectory's flat sequences."""
    import torch
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.sft import build_sequences, episodes_for
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    seqs = build_sequences(episodes_for([gold_trajectory]), ["flat"], tok, HierarchyConfig(mode="flat"), 2048)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    return model, tok, seqs
