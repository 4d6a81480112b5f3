"""Backbone warm-up: language-model pre-training of the *embedded* tiny backbone on environment text.

A real backbone (Llama-3-8B, ...) arrives knowing language; the embedded one is
randomly initialised, and LoRA adapters on a random network learn little.  The
warm-up trains all of its weights on plain transcripts of the collected
trajectories (task, observation, ``> action`` lines: no role markers, no prompt
format, loss on every token), the stand-in for pre-training.  The policy itself
is still learned by SFT in the adapters.  Real backbones skip this step.

The backbone directory is replaced atomically and its ``glider_backbone.json``
records the warm-up, which is part of the base identity adapters are checked
against: adapters trained on the cold backbone no longer load on the warm one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from glider.server.adapters.registry import base_model_identity
from glider.trainer.backbone import BUILD_INFO
from glider.trainer.data.schema import Trajectory
from glider.trainer.sequences import TokenSequence, transcript
from glider.trainer.training import TrainConfig, TrainResult, evaluate_loss, run_fingerprint, train

#: the standalone warm-up's optimiser settings (``glider train warmup``; the recipes set their own)
WARMUP = TrainConfig(lr=1e-3, epochs=4.0, batch_tokens=8192)


def data_key(trajectories: Sequence[Trajectory]) -> str:
    return hashlib.sha256("\n".join(sorted(t.id for t in trajectories)).encode()).hexdigest()[:16]


@dataclass
class WarmupReport:
    """What a warm-up did; the backbone's build info keeps it (flat) under ``warmup``."""
    data: str  # the collected data's key: the same data finds the warm-up done
    trajectories: int
    sequences: int
    val_loss_before: float | None  # None without held-out trajectories
    val_loss_after: float | None
    training: TrainResult

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "training"}
        return {**out, **self.training.as_dict()}


def warmup_info(model_dir: Path) -> dict | None:
    """The build info's record of the backbone's warm-up (``WarmupReport.to_dict``), if it had one."""
    info = Path(model_dir) / BUILD_INFO
    return json.loads(info.read_text()).get("warmup") if info.is_file() else None


def transcript_sequences(tokenizer, trajectories: Sequence[Trajectory], max_len: int = 1024
                         ) -> list[TokenSequence]:
    out = []
    for traj in trajectories:
        ids = tokenizer(transcript(traj), add_special_tokens=False)["input_ids"]
        for at in range(0, len(ids), max_len):
            chunk = ids[at: at + max_len]
            if len(chunk) > 1:
                out.append(TokenSequence(input_ids=chunk, labels=list(chunk), role="warmup"))
    return out


def warmup_backbone(model_dir: Path, trajectories: Sequence[Trajectory], cfg: TrainConfig, work_dir: Path,
                    *, held_out: Sequence[Trajectory] = ()) -> WarmupReport | None:
    """Train every weight of the backbone on transcripts; replace ``model_dir`` with the result.

    ``held_out`` trajectories measure the loss before and after, and with ``cfg.patience`` stop it early.
    The recorded data key covers both, so the same collected data finds the warm-up done.  Returns what
    it did (None in the processes of an ``accelerate launch`` other than the one that writes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    seqs = transcript_sequences(tokenizer, trajectories)
    val = transcript_sequences(tokenizer, held_out)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    val_before = evaluate_loss(model, val, tokenizer.pad_token_id) if val else None
    fingerprint = run_fingerprint(cfg, seqs, base_model_identity(model_dir), "warmup")
    result = train(model, seqs, cfg, Path(work_dir), pad_id=tokenizer.pad_token_id, name="warmup",
                   fingerprint=fingerprint, val_sequences=val if cfg.patience else None)
    val_after = evaluate_loss(model, val, tokenizer.pad_token_id) if val else None
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one process writes
        return None
    report = WarmupReport(data=data_key([*trajectories, *held_out]), trajectories=len(trajectories),
                          sequences=len(seqs), val_loss_before=val_before, val_loss_after=val_after, training=result)
    tmp = model_dir.with_name(model_dir.name + ".warm.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    model.save_pretrained(tmp, safe_serialization=True)
    build = json.loads((tmp / BUILD_INFO).read_text()) if (tmp / BUILD_INFO).is_file() else {}
    build["warmup"] = report.to_dict()
    (tmp / BUILD_INFO).write_text(json.dumps(build, indent=2))
    old = model_dir.with_name(model_dir.name + ".cold.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(model_dir, old)
    os.replace(tmp, model_dir)
    shutil.rmtree(old, ignore_errors=True)
    return report
