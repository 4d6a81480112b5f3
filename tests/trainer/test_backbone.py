"""The embedded backbone: one HF directory that transformers, peft and the tokenizer load unchanged,
rebuilt identically from the same seed and corpus."""

import json

import torch
from glider.server.policy.prompts import ROLE_MARKERS, SPECIAL_TOKENS
from glider.trainer.backbone import BUILD_INFO, BackboneConfig, build_model, train_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_loads_in_transformers_and_runs(backbone_dir):
    tok = AutoTokenizer.from_pretrained(backbone_dir)
    model = AutoModelForCausalLM.from_pretrained(backbone_dir)
    info = json.loads((backbone_dir / BUILD_INFO).read_text())
    assert 1e6 < info["parameters"] < 2e7 and info["parameters"] == sum(p.numel() for p in model.parameters())
    ids = tok("<|executor|>\nTask: boil water\nObs: hallway\nAction:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3


def test_role_markers_and_newline_are_single_tokens(backbone_dir):
    tok = AutoTokenizer.from_pretrained(backbone_dir)
    for marker in ROLE_MARKERS.values():
        assert len(tok(marker)["input_ids"]) == 1
    assert len(tok("\n")["input_ids"]) == 1
    text = "open door to kitchen; true\nObs: The door is now open."
    assert tok.decode(tok(text)["input_ids"]) == text
    # environment words are whole tokens: the BPE was trained on ScienceWorld text
    assert tok.tokenize(" thermometer") == ["Ġthermometer"]


def test_adapter_loads_in_peft(backbone_dir, adapters_dir):
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(backbone_dir)
    peft_model = PeftModel.from_pretrained(model, adapters_dir / "planner" / "current", adapter_name="planner")
    peft_model.load_adapter(adapters_dir / "executor" / "current", adapter_name="executor")
    assert set(peft_model.peft_config) == {"planner", "executor"}
    assert peft_model.peft_config["planner"].r == 8


def test_build_is_deterministic():
    lines = ["Your task is to boil water.", "open door to kitchen", "go to kitchen; true",
             "In it, you see: a adult bee a adult bee a bee hive"]
    # the simulator's randomness changes how often words occur and in which order, not which words
    drifted = list(reversed(lines)) * 3 + ["In it, you see: a adult bee a bee hive"]
    a, b = train_tokenizer(lines, 300), train_tokenizer(drifted, 300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert all(t in a.get_vocab() for t in SPECIAL_TOKENS)
    cfg = BackboneConfig(num_layers=1, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2)
    m1, m2 = build_model(cfg, a), build_model(cfg, a)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    cfg.seed = 1
    m3 = build_model(cfg, a)
    assert not torch.equal(m1.model.embed_tokens.weight, m3.model.embed_tokens.weight)
