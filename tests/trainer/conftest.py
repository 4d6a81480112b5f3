"""A real gold trajectory, collected once per session from the ScienceWorld JVM."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def expert_root(tmp_path_factory):
    """find-plant (train variation 0: a 10-step gold path) collected with the real collector."""
    from glider.trainer.data.collect import collect

    root = tmp_path_factory.mktemp("expert")
    counts = collect(root, tasks=["find-plant"], per_task=1, workers=1, progress=False)
    assert counts["played"] == 1
    return root


@pytest.fixture(scope="session")
def gold_trajectory(expert_root):
    from glider.trainer.data.collect import load_collected

    (traj,) = load_collected(expert_root, tasks=["find-plant"])
    return traj


@pytest.fixture(scope="session")
def tiny_model_dir(backbone_dir, tmp_path_factory):
    """A 2-layer, hidden-64 Llama on the embedded tokenizer: fast enough to train in a test."""
    from glider.trainer.backbone import BackboneConfig, build_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    model = build_model(BackboneConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                                       num_kv_heads=2), tokenizer)
    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    return out
