"""Stage 1, SFT: behaviour cloning of the planner on D^h and the executor on D^l with peft LoRA.

Modes (the server's ``GLIDER_MODE``):

* ``separate`` — a ``planner`` adapter trained on the planner's sequences and an
  ``executor`` adapter on the executor's (the card's multi-LoRA default);
* ``shared`` — one ``shared`` adapter on both, the role chosen only by the
  prompt's role marker (the paper's parameter-efficient setting);
* ``flat`` — the no-hierarchy baseline's ``flat`` adapter on (task, o_t, a_t).

Sequences come from ``glider.trainer.sequences`` (the server's prompt code, its
windows from the same ``Settings``), the loss is on target tokens only, and the
trained adapters are published to the registry the server watches, so a
running server hot-swaps them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from glider.server.adapters.registry import base_model_identity
from glider.server.policy.controller import HierarchyConfig
from glider.server.policy.modes import ADAPTER_ROLES
from glider.trainer.data.hierarchy import (
    Annotator,
    HierarchicalEpisode,
    SegmentationConfig,
    annotate,
    split_by_group,
)
from glider.trainer.data.schema import Trajectory
from glider.trainer.diagnostics import MarkerMetrics, SegmentCompletion
from glider.trainer.lora import LoraSettings
from glider.trainer.sequences import SequenceBuilder, TokenSequence, role_sequences
from glider.trainer.training import (
    AdapterReportLayout,
    TrainConfig,
    TrainResult,
    evaluate_loss,
    run_fingerprint,
    train,
)

log = logging.getLogger(__name__)



def sft_lora() -> LoraSettings:
    # every linear projection: the embedded backbone is tiny, and the MLP adapters
    # carry much of what SFT has to add; rank 16 = the server's default max rank
    return LoraSettings(r=16, alpha=32, dropout=0.05,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                        "down_proj"])


@dataclass
class SFTConfig:
    mode: str = "separate"
    lora: LoraSettings = field(default_factory=sft_lora)
    # to convergence: up to 30 epochs, stopped when the held-out variations' loss stops improving
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-3, epochs=30.0, batch_tokens=2048,
                                                                   patience=4, eval_every=50))
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    val_fraction: float = 0.1
    max_len: int = 2048
    split_seed: int = 0
    # held-out gold segments replayed in ScienceWorld to measure the executor's completion
    # (``glider.trainer.diagnostics``); 0 skips it (the teacher-forced marker metrics always run)
    diagnose_segments: int = 0


@dataclass
class SFTAdapterReport(AdapterReportLayout):
    """One adapter's SFT run: its data, its held-out loss before and after, the training loop's result,
    and the executor's diagnostics on held-out segments (None where they did not run)."""
    sequences: int
    tokens: int
    target_tokens: int
    val_loss_before: float
    val_loss_after: float
    training: TrainResult
    completion_marker: MarkerMetrics | None = None
    segment_completion: SegmentCompletion | None = None
    published: str | None = None  # the registry version, when it was published

    def to_dict(self) -> dict:
        """The flat layout of ``sft_metrics.json`` (the training figures beside the data's)."""
        return self.flat({k: v for k, v in asdict(self).items()
                          if k not in ("training", "published") and v is not None})


@dataclass
class SFTReport:
    mode: str
    train_trajectories: int
    val_trajectories: int
    config: SFTConfig
    adapters: dict[str, SFTAdapterReport] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "trajectories": {"train": self.train_trajectories, "val": self.val_trajectories},
                "config": {"lora": asdict(self.config.lora), "train": asdict(self.config.train)},
                "adapters": {name: a.to_dict() for name, a in self.adapters.items()}}


def episodes_for(trajs: Sequence[Trajectory], annotator: Annotator | None = None,
                 seg: SegmentationConfig = SegmentationConfig()) -> list[HierarchicalEpisode]:
    return [annotate(t, annotator, seg) for t in trajs if t.steps]


def build_sequences(episodes, roles, tokenizer, hierarchy: HierarchyConfig, max_len: int
                    ) -> list[TokenSequence]:
    return role_sequences(episodes, roles, SequenceBuilder(tokenizer, max_len), hierarchy)


def run_sft(model_dir: Path, trajectories: Sequence[Trajectory], out_dir: Path, cfg: SFTConfig, *,
            hierarchy: HierarchyConfig | None = None, registry: Path | None = None,
            annotator: Annotator | None = None) -> SFTReport:
    """Train the mode's adapters; publish them to ``registry`` when given.  Returns what each run did
    (also written to ``<out_dir>/sft_metrics.json``)."""
    import torch
    from accelerate import PartialState
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = PartialState()
    if cfg.mode not in ADAPTER_ROLES:
        raise ValueError(f"unknown SFT mode {cfg.mode!r} (separate | shared | flat)")
    hierarchy = hierarchy or HierarchyConfig(mode=cfg.mode)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_trajs, val_trajs = split_by_group(trajectories, cfg.val_fraction, cfg.split_seed)
    train_eps = episodes_for(train_trajs, annotator, cfg.segmentation)
    val_eps = episodes_for(val_trajs, annotator, cfg.segmentation)
    jobs = {name: (build_sequences(train_eps, roles, tokenizer, hierarchy, cfg.max_len),
                   build_sequences(val_eps, roles, tokenizer, hierarchy, cfg.max_len))
            for name, roles in ADAPTER_ROLES[cfg.mode].items()}
    total_tokens = sum(sum(len(s) for s in tr) for tr, _ in jobs.values())
    report = SFTReport(mode=cfg.mode, train_trajectories=len(train_trajs), val_trajectories=len(val_trajs),
                       config=cfg)
    for name, (train_seqs, val_seqs) in jobs.items():
        roles = ADAPTER_ROLES[cfg.mode][name]
        tokens = sum(len(s) for s in train_seqs)
        train_cfg = cfg.train
        if train_cfg.max_minutes is not None:  # share a time budget by each adapter's data size
            train_cfg = TrainConfig(**{**asdict(train_cfg),
                                       "max_minutes": train_cfg.max_minutes * tokens / max(1, total_tokens)})
        torch.manual_seed(train_cfg.seed)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))
        val_before = evaluate_loss(model, val_seqs, tokenizer.pad_token_id)
        log.info("%s: %d sequences, %d tokens (%d targets); val loss %.3f", name, len(train_seqs), tokens,
                 sum(s.target_tokens for s in train_seqs), val_before)
        fingerprint = run_fingerprint(train_cfg, train_seqs, base_model_identity(model_dir), asdict(cfg.lora), name)
        result = train(model, train_seqs, train_cfg, out_dir / name, pad_id=tokenizer.pad_token_id, name=name,
                       fingerprint=fingerprint, val_sequences=val_seqs)
        val_after = evaluate_loss(model, val_seqs, tokenizer.pad_token_id)
        marker = segments = None
        if "executor" in roles and val_eps:
            from glider.trainer.diagnostics import LocalGenerator, completion_share, marker_metrics

            generator = LocalGenerator(model, tokenizer)
            marker = marker_metrics(generator, val_eps, hierarchy)
            if cfg.diagnose_segments:
                segments = completion_share(generator, val_eps, hierarchy, cfg.diagnose_segments)
            log.info("%s: executor diagnostics on held-out segments: %s %s", name, marker, segments)
        adapter_dir = out_dir / name / "adapter"
        if not state.is_main_process:  # under `accelerate launch`, one process writes and publishes
            continue
        model.save_pretrained(adapter_dir, safe_serialization=True)
        entry = SFTAdapterReport(sequences=len(train_seqs), tokens=tokens,
                                 target_tokens=sum(s.target_tokens for s in train_seqs), val_loss_before=val_before,
                                 val_loss_after=val_after, training=result, completion_marker=marker,
                                 segment_completion=segments)
        if registry is not None:
            from glider.trainer.publish import publish_adapter

            entry.published = publish_adapter(registry, name, adapter_dir, model_dir, stage="sft",
                                              metrics=entry.scalars(), reuse_identical=True).version
        report.adapters[name] = entry
        del model, base
    if state.is_main_process:
        (out_dir / "sft_metrics.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report
