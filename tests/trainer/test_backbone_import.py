"""`glider backbone import`: the registry package's SmolLM2 (GGUF, Q4_1) becomes an ordinary HF directory,
byte-identical on every import, that transformers loads without the GGUF reader."""

from __future__ import annotations

import hashlib
import json

import pytest
from glider.server.adapters.registry import base_model_identity
from glider.trainer.backbone import BUILD_INFO, is_embedded
from glider.trainer.backbone_import import (
    BackboneImportError,
    import_backbone,
    package_source,
    resolve_source,
)


def sha256(path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_the_package_model_imports_as_a_plain_float32_llama(smollm_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    info = json.loads((smollm_dir / BUILD_INFO).read_text())
    assert info["imported"] == {"source": package_source().package, "format": "gguf",
                                "sha256": sha256(package_source().path)}  # by content, never by path
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] == 134_515_008
    assert AutoConfig.from_pretrained(smollm_dir).num_hidden_layers == 30
    tok = AutoTokenizer.from_pretrained(smollm_dir)  # no gguf_file: the directory stands on its own
    assert len(tok) == info["vocab_size"] == 49_152 and tok.chat_template and tok.pad_token is not None
    # a real tokenizer: our role markers are several tokens, and text round-trips
    assert len(tok("<|executor|>")["input_ids"]) > 1
    text = "open door to kitchen; true\nObs: The door is now open."
    assert tok.decode(tok(text)["input_ids"]) == text
    model = AutoModelForCausalLM.from_pretrained(smollm_dir)
    assert sum(p.numel() for p in model.parameters()) == info["parameters"]


def test_the_import_is_deterministic_and_its_identity_is_its_own(smollm_dir, tmp_path, backbone_dir):
    again = import_backbone(tmp_path / "again")
    assert sha256(again / "model.safetensors") == sha256(smollm_dir / "model.safetensors")
    assert base_model_identity(again)["config_sha256"] == base_model_identity(smollm_dir)["config_sha256"]
    # adapters are bound to their base: the embedded backbone is another one
    assert base_model_identity(smollm_dir)["config_sha256"] != base_model_identity(backbone_dir)["config_sha256"]


def test_only_the_embedded_backbone_is_warmed_up(smollm_dir, backbone_dir, tmp_path):
    # the recipe's warm-up trains every weight: never on a pretrained model, imported or named by a user
    assert is_embedded(backbone_dir)
    assert not is_embedded(smollm_dir)
    plain = tmp_path / "some-hf-model"
    plain.mkdir()
    (plain / "config.json").write_text((smollm_dir / "config.json").read_text())
    assert not is_embedded(plain)


def test_bad_sources_get_a_clear_error(tmp_path):
    with pytest.raises(BackboneImportError, match="no such file"):
        resolve_source(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(BackboneImportError, match="must be a .gguf file"):
        resolve_source(tmp_path / "notes.txt")
    with pytest.raises(BackboneImportError, match="0 found"):
        resolve_source(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # an HF directory in name only
    with pytest.raises(BackboneImportError, match="not a causal language model"):
        import_backbone(tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
