"""Stage 2, ORL: offline RL of the planner on D^h and the executor on D^l (and of the flat baseline).

For each adapter of the mode (``glider.trainer.sft.ADAPTER_ROLES``) and each role it plays:

1. **Decisions.**  The role's training sequences (the server's prompts, chained as
   in SFT) with one decision per target utterance: its reward — Σr over the
   segment for a subgoal (D^h), the intrinsic r̂ for an action (D^l), the
   environment's reward for the flat agent — whether its level's episode ended,
   and the steps it spanned (``sequences.role_decisions``).
2. **Critic.**  The starting policy (SFT adapter, or a fresh one for the
   ORL-only ablation) reads every sequence once; the detached hidden states at
   each prompt's end and utterance's end feed the Q/V heads, trained with TD +
   expectile losses and Polyak targets (``glider.trainer.critic``).
3. **Actor.**  Token-level advantage-weighted regression from the starting
   adapter: the loss −exp(A/λ)·Σ_i log π(w_i | s, w_<i) (clipped, normalised),
   ``training.weighted_nll``, on the same sequences, in the same training loop
   as SFT (checkpoints, TensorBoard, accelerate).
4. **Publish** the adapter (stage ``orl``) with the critic heads beside it.

The data is the mix RL can exploit: expert trajectories plus suboptimal ones
(the SFT agent's own episodes recorded by the server, perturbed expert
replays), each with its real environment rewards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from glider.server.adapters.registry import AdapterRegistry, base_model_identity
from glider.server.policy.controller import HierarchyConfig
from glider.server.policy.modes import ADAPTER_ROLES
from glider.trainer.data.hierarchy import Annotator, SegmentationConfig
from glider.trainer.data.schema import Trajectory
from glider.trainer.lora import LoraSettings
from glider.trainer.rl import CriticConfig
from glider.trainer.sequences import SequenceBuilder, TokenSequence, role_decisions
from glider.trainer.sft import episodes_for, sft_lora
from glider.trainer.training import (
    AdapterReportLayout,
    TrainConfig,
    TrainResult,
    run_fingerprint,
    train,
)

log = logging.getLogger(__name__)


@dataclass
class ORLConfig:
    mode: str = "separate"  # separate | shared | flat (the adapters, as in SFT)
    init: str = "sft"  # sft: from the registry's current adapters | scratch: a fresh LoRA (the "ORL" ablation)
    critic: CriticConfig = field(default_factory=CriticConfig)
    actor: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, epochs=2.0, warmup_steps=5))
    lora: LoraSettings = field(default_factory=sft_lora)  # for init=scratch
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    max_len: int = 2048


def load_policy(model_dir: Path, *, adapter: Path | None, lora: LoraSettings | None, seed: int = 0):
    """The backbone with a trainable LoRA: ``adapter``'s weights, or a fresh one (B = 0) when None."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    if lora is None:
        raise ValueError("a fresh adapter needs its LoRA settings")
    return get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                           target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def attach_weights(sequences: Sequence[TokenSequence], weights) -> None:
    """Give each sequence its spans' weights from a flat per-decision tensor in (sequence, span) order."""
    at = 0
    for seq in sequences:
        n = len(seq.spans)
        seq.weights = [float(w) for w in weights[at: at + n]]
        at += n
    if at != len(weights):
        raise ValueError(f"{len(weights)} weights for {at} decisions")


@dataclass
class WeightStats:
    """What the advantages and actor weights looked like: the numbers to check an RL run by."""
    decisions: int
    advantage_mean: float = 0.0
    advantage_std: float = 0.0
    weight_min: float = 0.0
    weight_max: float = 0.0
    clipped_share: float | None = None  # GLIDER's exp(A/λ) with a cap: the share of weights at the cap


def weight_stats(adv, weights, cfg: CriticConfig) -> WeightStats:
    import math

    if not adv.numel():
        return WeightStats(decisions=0)
    clipped = None
    if cfg.kind == "glider" and cfg.max_weight is not None:
        clipped = float((adv / cfg.lam > math.log(cfg.max_weight)).float().mean())
    return WeightStats(decisions=int(adv.numel()), advantage_mean=float(adv.mean()),
                       advantage_std=float(adv.std()) if adv.numel() > 1 else 0.0,
                       weight_min=float(weights.min()), weight_max=float(weights.max()), clipped_share=clipped)


@dataclass
class ORLRoleReport:
    """One role's critic: its data, its final losses, and the weights it gave the actor."""
    sequences: int
    critic_loss: dict[str, float]  # loss name -> last value
    reward_sum: float
    weights: WeightStats

    def to_dict(self) -> dict:
        weights = {k: v for k, v in asdict(self.weights).items() if v is not None} if self.weights.decisions \
            else {"decisions": 0}  # no decisions, no advantages to describe
        return {"sequences": self.sequences, "critic_loss": self.critic_loss, "reward_sum": self.reward_sum,
                **weights}


@dataclass
class ORLAdapterReport(AdapterReportLayout):
    roles: dict[str, ORLRoleReport]
    critic_seconds: float
    tokens: int
    training: TrainResult
    started_from: str | None = None  # the registry version the actor started from (init="sft")
    published: str | None = None

    def to_dict(self) -> dict:
        """The layout of ``orl_metrics.json``'s adapter entries (the actor's training figures flat)."""
        return self.flat({"roles": {role: r.to_dict() for role, r in self.roles.items()},
                          "critic_seconds": self.critic_seconds}, {"tokens": self.tokens})


@dataclass
class ORLReport:
    mode: str
    init: str
    trajectories: dict[str, int]  # source (expert, perturbed, rollout...) -> count
    config: ORLConfig
    adapters: dict[str, ORLAdapterReport] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"mode": self.mode, "init": self.init, "trajectories": self.trajectories,
               "config": {"critic": asdict(self.config.critic), "actor": asdict(self.config.actor)},
               "adapters": {name: a.to_dict() for name, a in self.adapters.items()}}
        started = {name: a.started_from for name, a in self.adapters.items() if a.started_from}
        if started:
            out["started_from"] = started
        return out


def critic_and_weights(model, sequences: Sequence[TokenSequence], decisions, pad_id: int, cfg: CriticConfig,
                       *, progress: bool = True):
    """Fit a critic on the role's decisions (features from ``model``) and return it with the actor weights."""
    from glider.trainer.critic import Critic, Transitions, decision_features

    state, utterance = decision_features(model, sequences, pad_id, progress=progress)
    data = Transitions.build(state, utterance, decisions, cfg.gamma, cfg.reward_scale)
    critic = Critic(state.size(-1), cfg)
    losses = critic.fit(data, progress=progress)
    adv = critic.advantages(data)
    weights = critic.actor_weights(data, adv)
    return critic, data, adv, weights, losses


def run_orl(model_dir: Path, trajectories: Sequence[Trajectory], out_dir: Path, cfg: ORLConfig, *,
            hierarchy: HierarchyConfig | None = None, registry: Path | None = None,
            annotator: Annotator | None = None, publish: bool = True, make_current: bool = True,
            start_versions: dict[str, str] | None = None, progress: bool = True) -> ORLReport:
    """Train the mode's adapters with ORL; publish them (stage ``orl``) to ``registry`` when given and
    ``publish``.

    ``init="sft"`` starts each adapter from the registry's current version of it (run SFT first), or
    the version ``start_versions`` names; ``init="scratch"`` from a fresh LoRA.  ``make_current=False``
    publishes without serving (an experiment switches versions itself).  Returns what each adapter's
    critic and actor did (also ``<out_dir>/orl_metrics.json``).
    """
    import time

    from accelerate import PartialState
    from transformers import AutoTokenizer

    state = PartialState()
    if cfg.mode not in ADAPTER_ROLES:
        raise ValueError(f"unknown mode {cfg.mode!r} (separate | shared | flat)")
    if cfg.init not in ("sft", "scratch"):
        raise ValueError(f"unknown init {cfg.init!r} (sft | scratch)")
    if cfg.init == "sft" and registry is None:
        raise ValueError("init='sft' needs the registry that holds the SFT adapters")
    hierarchy = hierarchy or HierarchyConfig(mode=cfg.mode)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    episodes = episodes_for(trajectories, annotator, cfg.segmentation)
    sources: dict[str, int] = {}
    for t in trajectories:
        sources[t.source] = sources.get(t.source, 0) + 1
    # every adapter's decisions up front: the actor's time budget is shared by data size, as in SFT
    jobs = {name: {role: role_decisions(episodes, role, SequenceBuilder(tokenizer, cfg.max_len), hierarchy)
                   for role in roles} for name, roles in ADAPTER_ROLES[cfg.mode].items()}
    total_tokens = sum(len(s) for per_role in jobs.values() for seqs, _ in per_role.values() for s in seqs)
    report = ORLReport(mode=cfg.mode, init=cfg.init, trajectories=sources, config=cfg)
    for name, per_role in jobs.items():
        start_adapter = started_from = None
        if cfg.init == "sft":
            start = AdapterRegistry(registry).get(name, (start_versions or {}).get(name))
            start_adapter, started_from = start.path, start.version
        model = load_policy(model_dir, adapter=start_adapter, lora=cfg.lora, seed=cfg.actor.seed)
        roles: dict[str, ORLRoleReport] = {}
        t0 = time.monotonic()
        all_seqs: list[TokenSequence] = []
        for role, (seqs, decisions) in per_role.items():
            critic, data, adv, weights, losses = critic_and_weights(model, seqs, decisions, tokenizer.pad_token_id,
                                                                    cfg.critic, progress=progress)
            attach_weights(seqs, weights)
            all_seqs += seqs
            if state.is_main_process:
                critic.save(out_dir / name / f"critic-{role}.safetensors")
            stats = weight_stats(adv, weights, cfg.critic)
            roles[role] = ORLRoleReport(sequences=len(seqs), critic_loss=losses, reward_sum=float(data.reward.sum()),
                                        weights=stats)
            log.info("%s/%s: %d decisions, critic %s, advantage %.3f±%.3f", name, role, len(decisions), losses,
                     stats.advantage_mean, stats.advantage_std)
        critic_seconds = time.monotonic() - t0
        actor_cfg = cfg.actor
        if actor_cfg.max_minutes is not None:  # the stage's budget, shared by the adapters by data size
            actor_cfg = TrainConfig(**{**asdict(actor_cfg), "max_minutes": actor_cfg.max_minutes * sum(
                len(s) for s in all_seqs) / max(1, total_tokens)})
        fingerprint = run_fingerprint(actor_cfg, all_seqs, base_model_identity(model_dir), cfg.init,
                                      str(start_adapter), name, "orl")
        result = train(model, all_seqs, actor_cfg, out_dir / name, pad_id=tokenizer.pad_token_id,
                       name=f"orl-{name}", fingerprint=fingerprint)
        entry = ORLAdapterReport(roles=roles, critic_seconds=critic_seconds, tokens=sum(len(s) for s in all_seqs),
                                 training=result, started_from=started_from)
        if not state.is_main_process:
            continue
        adapter_dir = out_dir / name / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        if registry is not None and publish:
            from glider.trainer.publish import publish_adapter

            entry.published = publish_adapter(registry, name, adapter_dir, model_dir, make_current=make_current,
                                              stage="orl" if cfg.init == "sft" else "orl-scratch",
                                              metrics=entry.scalars()).version
        report.adapters[name] = entry
        del model
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "orl_metrics.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report
