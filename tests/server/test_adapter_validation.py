"""Every kind of bad adapter is refused by validation, with a message that says what is wrong."""

import json
import shutil

import pytest
from glider.server.adapters import AdapterNotFound, AdapterRegistry, InvalidAdapter
from glider.server.adapters.manager import SUPPORTED_MODULES
from glider.trainer.lora import LoraSettings, create_adapter
from glider.trainer.publish import publish_adapter


@pytest.fixture(scope="module")
def good_src(backbone_dir, tmp_path_factory):
    return create_adapter(backbone_dir, tmp_path_factory.mktemp("good"))


def check(reg, name, backbone_dir, version=None):
    from glider.server.adapters.registry import base_model_identity

    reg.validate(reg.get(name, version), base_model=base_model_identity(backbone_dir), max_rank=16,
                 supported_modules=SUPPORTED_MODULES)


def test_a_good_adapter_passes(tmp_path, good_src, backbone_dir):
    publish_adapter(tmp_path, "planner", good_src, backbone_dir, stage="t")
    check(AdapterRegistry(tmp_path), "planner", backbone_dir)


def test_corrupt_truncated_and_missing_files(tmp_path, good_src, backbone_dir):
    reg = AdapterRegistry(tmp_path)
    v = publish_adapter(tmp_path, "planner", good_src, backbone_dir, stage="t")
    weights = v.path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidAdapter, match="checksum"):
        check(reg, "planner", backbone_dir)
    weights.unlink()
    with pytest.raises(InvalidAdapter, match="missing"):
        check(reg, "planner", backbone_dir)

    # truncated before publishing: the checksums match the broken file, the weights check does not
    broken = tmp_path / "broken"
    shutil.copytree(good_src, broken)
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    publish_adapter(tmp_path, "executor", broken, backbone_dir, stage="t")
    with pytest.raises(InvalidAdapter, match="unreadable"):
        check(reg, "executor", backbone_dir)


def test_wrong_base_over_rank_and_unsupported_modules(tmp_path, good_src, backbone_dir):
    reg = AdapterRegistry(tmp_path)
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    publish_adapter(tmp_path, "planner", good_src, other, stage="t")
    with pytest.raises(InvalidAdapter, match="another base model"):
        check(reg, "planner", backbone_dir)

    big = create_adapter(backbone_dir, tmp_path / "big", LoraSettings(r=32, alpha=64))
    publish_adapter(tmp_path, "executor", big, backbone_dir, stage="t")
    with pytest.raises(InvalidAdapter, match="exceeds"):
        check(reg, "executor", backbone_dir)

    odd = create_adapter(backbone_dir, tmp_path / "odd", LoraSettings(target_modules=["lm_head"]))
    publish_adapter(tmp_path, "shared", odd, backbone_dir, stage="t")
    with pytest.raises(InvalidAdapter, match="not supported"):
        check(reg, "shared", backbone_dir)


def test_half_written_versions_are_invisible(tmp_path, good_src, backbone_dir):
    reg = AdapterRegistry(tmp_path)
    publish_adapter(tmp_path, "planner", good_src, backbone_dir, stage="t")
    # a publisher that died mid-copy leaves a hidden temp dir; one that died before the
    # manifest leaves a version dir without it
    shutil.copytree(good_src, tmp_path / "planner" / ".publish-crashed")
    shutil.copytree(good_src, tmp_path / "planner" / "v0002")
    assert reg.current_version("planner") == "v0001"
    with pytest.raises(AdapterNotFound):
        reg.get("planner", "v0002")
    assert reg.next_version("planner") == "v0003"  # never reuses a name a crash left behind


def test_prune_keeps_current_and_its_parent(tmp_path, good_src, backbone_dir):
    reg = AdapterRegistry(tmp_path)
    for _ in range(5):
        publish_adapter(tmp_path, "planner", good_src, backbone_dir, stage="t")
    reg.set_current("planner", "v0002")
    assert reg.prune("planner", keep=1) == ["v0003", "v0004"]
    assert reg.versions("planner") == ["v0001", "v0002", "v0005"]
