"""Agent profiles on disk: today's registry is the default profile, definitions survive a restart, and
each profile's adapters live in a registry of their own."""

from __future__ import annotations

import json

import pytest
from glider.server.adapters.registry import AdapterRegistry
from glider.server.policy.controller import HierarchyConfig
from glider.server.policy.modes import PolicyMode
from glider.server.profiles import (
    DEFAULT,
    GenerationSettings,
    InvalidProfile,
    ProfileNotFound,
    ProfileProtected,
    ProfileSpec,
    ProfileStore,
)
from pydantic import ValidationError


def publish(registry: AdapterRegistry, name: str, tmp_path) -> str:
    src = tmp_path / f"src-{name}-{len(list(tmp_path.iterdir()))}"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    return registry.publish(name, src).version


def test_todays_registry_is_the_default_profile_with_the_servers_settings(tmp_path):
    root = tmp_path / "adapters"
    publish(AdapterRegistry(root), "planner", tmp_path)
    store = ProfileStore(root, ProfileSpec(mode=PolicyMode.flat))
    assert store.names() == [DEFAULT]
    default = store.get(DEFAULT)
    assert default.mode is PolicyMode.flat and default.adapter_names == ["flat"]
    assert store.registry(DEFAULT).root == root and store.registry(DEFAULT).current_version("planner") == "v0001"
    assert default.serving_name("flat") == "flat"  # the engine's names stay what they were


def test_definitions_survive_a_restart_and_override_only_what_they_name(tmp_path):
    root = tmp_path / "adapters"
    spec = ProfileSpec(mode=PolicyMode.shared, generation=GenerationSettings(temperature=0.7, c_max=4,
                                                                            grounding_protected=["focus on"]))
    ProfileStore(root, ProfileSpec()).put("textworld", spec)
    again = ProfileStore(root, ProfileSpec())  # a new server process on the same volume
    assert again.names() == [DEFAULT, "textworld"]
    profile = again.get("textworld")
    assert profile.mode is PolicyMode.shared and profile.adapter_names == ["shared"]
    server = HierarchyConfig(mode="separate", temperature=0.0, c_max=10, history_window=5)
    cfg = profile.hierarchy(server)
    assert (cfg.mode, cfg.temperature, cfg.c_max, cfg.history_window) == ("shared", 0.7, 4, 5)
    assert cfg.grounding_protected == ("focus on",)
    assert profile.serving_name("shared") == "textworld/shared"
    # a changed default is stored too, and replaces the settings' one
    again.put(DEFAULT, ProfileSpec(mode=PolicyMode.flat))
    assert ProfileStore(root, ProfileSpec()).get(DEFAULT).mode is PolicyMode.flat


def test_profiles_adapters_are_namespaced(tmp_path):
    root = tmp_path / "adapters"
    store = ProfileStore(root, ProfileSpec())
    publish(store.registry(DEFAULT), "planner", tmp_path)
    store.put("textworld", ProfileSpec())
    publish(store.registry("textworld"), "planner", tmp_path)
    publish(store.registry("textworld"), "planner", tmp_path)
    assert store.registry("textworld").current_version("planner") == "v0002"
    assert store.registry(DEFAULT).current_version("planner") == "v0001"  # untouched
    assert store.registry(DEFAULT).names() == ["planner"]  # the profiles' folder is not an adapter


def test_prompted_base_model_profile_has_no_adapters(tmp_path):
    store = ProfileStore(tmp_path, ProfileSpec())
    assert store.put("react", ProfileSpec(adapters=False)).adapter_names == []


def test_bad_names_and_settings_are_refused_and_change_nothing(tmp_path):
    store = ProfileStore(tmp_path, ProfileSpec())
    for bad in ("../up", "Upper", "", "a" * 65, "@profiles"):
        with pytest.raises(InvalidProfile, match="invalid profile name"):
            store.put(bad, ProfileSpec())
    with pytest.raises(ValidationError):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValidationError):
        ProfileSpec.model_validate({"mode": "separate", "unknown": 1})
    with pytest.raises(ProfileNotFound):
        store.get("missing")
    with pytest.raises(ProfileProtected, match="cannot be deleted"):
        store.delete(DEFAULT)
    with pytest.raises(ProfileNotFound):
        store.delete("missing")
    assert store.names() == [DEFAULT]


def test_delete_removes_the_profile_and_its_adapters(tmp_path):
    store = ProfileStore(tmp_path, ProfileSpec())
    store.put("old", ProfileSpec())
    publish(store.registry("old"), "executor", tmp_path)
    store.delete("old")
    assert store.names() == [DEFAULT]
    assert not any(p.name.startswith((".deleted", "old")) for p in (tmp_path / "@profiles").iterdir())
    with pytest.raises(ProfileNotFound):
        store.get("old")


def test_a_corrupt_definition_is_reported_not_served(tmp_path):
    store = ProfileStore(tmp_path, ProfileSpec())
    store.put("broken", ProfileSpec())
    (tmp_path / "@profiles" / "broken" / "profile.json").write_text('{"mode": "sideways"}')
    with pytest.raises(InvalidProfile, match="not a valid definition"):
        store.get("broken")
