import json
import os

import pytest
from glider.server.adapters import AdapterNotFound, AdapterRegistry, InvalidAdapter


def fake_peft(tmp_path, name="src", payload=b"weights"):
    src = tmp_path / name
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16,
                                                         "target_modules": ["v_proj", "q_proj"]}))
    (src / "adapter_model.safetensors").write_bytes(payload)
    return src


def test_publish_versions_and_current_pointer(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    v1 = reg.publish("planner", fake_peft(tmp_path, "a"))
    v2 = reg.publish("planner", fake_peft(tmp_path, "b", b"other"))
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert reg.current_version("planner") == "v0002"
    assert v2.manifest["parent"] == "v0001" and v2.manifest["rank"] == 8
    assert v2.manifest["target_modules"] == ["q_proj", "v_proj"]
    assert reg.versions("planner") == ["v0001", "v0002"]
    reg.set_current("planner", "v0001")
    assert reg.get("planner").version == "v0001"
    # nothing half-written is left behind
    assert not [p for p in (tmp_path / "reg" / "planner").iterdir() if p.name.startswith(".")]


def test_verify_catches_corruption(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    v = reg.publish("executor", fake_peft(tmp_path))
    reg.verify(v)
    (v.path / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(InvalidAdapter):
        reg.verify(v)


def test_names_and_versions_cannot_escape_the_root(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    for bad in ["../x", "a/b", "", "Planner", "/etc"]:
        with pytest.raises(InvalidAdapter):
            reg.get(bad)
    for bad in ["../../etc", "v1", "latest"]:
        with pytest.raises(InvalidAdapter):
            reg.get("planner", bad)
    with pytest.raises(AdapterNotFound):
        reg.get("planner")


def test_publish_refuses_a_directory_that_is_not_an_adapter(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidAdapter):
        reg.publish("planner", tmp_path / "empty")
    assert reg.versions("planner") == []
    assert not os.path.exists(tmp_path / "reg" / "planner" / "current")


def test_symbolic_links_cannot_lead_out_of_the_registry(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    v = reg.publish("planner", fake_peft(tmp_path))
    outside = tmp_path / "outside"
    outside.mkdir()
    for f in v.path.iterdir():
        (outside / f.name).write_bytes(f.read_bytes())
    (tmp_path / "reg" / "planner" / "v0002").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidAdapter, match="symbolic link"):
        reg.get("planner", "v0002")
    # a file inside a real version directory that links elsewhere (same bytes: the checksum passes)
    weights = v.path / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "adapter_model.safetensors")
    with pytest.raises(InvalidAdapter, match="symbolic link"):
        reg.verify(reg.get("planner", "v0001"))
    # `current` names a version by its last path component only, so ../../ leads nowhere
    os.remove(tmp_path / "reg" / "planner" / "current")
    os.symlink("../../../outside/v0001", tmp_path / "reg" / "planner" / "current")
    assert reg.current_version("planner") == "v0001"


def test_a_pinned_copy_serves_one_agent_of_several(tmp_path):
    reg = AdapterRegistry(tmp_path / "reg")
    reg.publish("planner", fake_peft(tmp_path, "a"))  # v0001: the SFT agent's planner
    reg.publish("executor", fake_peft(tmp_path, "e"))
    reg.publish("planner", fake_peft(tmp_path, "b", b"orl"), make_current=False)  # v0002: ORL's, not served
    sft = reg.pinned_copy({"planner": "v0001", "executor": "v0001"}, tmp_path / "sft")
    orl = reg.pinned_copy({"planner": "v0002", "executor": "v0001"}, tmp_path / "orl")
    assert (sft.current_version("planner"), orl.current_version("planner")) == ("v0001", "v0002")
    assert orl.versions("planner") == ["v0002"] and orl.current_version("executor") == "v0001"
    pinned = orl.get("planner")  # real directories (the registry refuses links), verified like the source
    orl.verify(pinned)
    assert (pinned.path / "adapter_model.safetensors").read_bytes() == b"orl"
    assert reg.current_version("planner") == "v0001"  # the source is untouched
    again = reg.pinned_copy({"planner": "v0002", "executor": "v0001"}, tmp_path / "orl")  # reused as it is
    assert again.versions("planner") == ["v0002"]
    with pytest.raises(AdapterNotFound):
        reg.pinned_copy({"planner": "v0009"}, tmp_path / "nope")


def test_a_resumed_stage_that_publishes_the_same_adapter_again_adds_no_version(tmp_path):
    from glider.trainer.publish import publish_adapter

    reg, model = tmp_path / "reg", tmp_path / "model"
    model.mkdir()
    first = publish_adapter(reg, "planner", fake_peft(tmp_path, "a"), model, stage="orl", reuse_identical=True)
    again = fake_peft(tmp_path, "again")  # the same weights; peft wrote the module set in another order
    (again / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16,
                                                           "target_modules": ["q_proj", "v_proj"]}))
    assert publish_adapter(reg, "planner", again, model, stage="orl", reuse_identical=True).version == first.version
    # another stage, other weights, or a caller that did not ask: a new version
    assert publish_adapter(reg, "planner", again, model, stage="sft", reuse_identical=True).version == "v0002"
    assert publish_adapter(reg, "planner", fake_peft(tmp_path, "b", b"other"), model, stage="sft",
                           reuse_identical=True).version == "v0003"
    assert publish_adapter(reg, "planner", fake_peft(tmp_path, "c", b"other"), model, stage="sft").version == "v0004"
    assert AdapterRegistry(reg).versions("planner") == ["v0001", "v0002", "v0003", "v0004"]
