"""Stage 2, ORL: offline RL of the planner on D^h and the executor on D^l (and of the flat baseline).

For each adapter of the mode (``glider.trainer.sft.ADAPTER_ROLES``) and each role it plays:

1. **Decisions.**  The role's training sequences (the server's prompts, chained as
   in SFT) with one decision per target utterance: its reward — Σr over the
   segment for a subgoal (D^h), the intrinsic r̂ for an action (D^l,
   ``hierarchy.IntrinsicReward``), the environment's reward for the flat agent —
   whether its level's episode ended, and the steps it spanned
   (``sequences.role_decisions``).
2. **Critic and actor alternate, one round per actor epoch** (the authors run 4).
   Each round the current policy reads every sequence once; the detached hidden
   states at each prompt's end and utterance's end feed the Q/V heads, which go on
   training (TD + expectile losses, Polyak targets: ``glider.trainer.critic``) on
   the new features; the advantages and the actor's weights exp(A/λ) are then
   recomputed, and the actor trains one epoch on them with the loss
   −exp(A/λ)·Σ_i log π(w_i | s, w_<i) (``training.weighted_nll``), in the same
   training loop as SFT (checkpoints, TensorBoard, accelerate).
3. **Diagnostics per round** (``CriticRound``): the advantage's mean and spread per
   data source (expert, perturbed, the SFT agent's own episodes), the weights'
   effective sample size, and on held-out variations (never trained on) the rank
   correlation of A with the return the episode actually got: whether the critic
   ranks the data, before and while the actor spends its steps.
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
from glider.trainer.data.hierarchy import (
    Annotator,
    IntrinsicReward,
    SegmentationConfig,
    split_by_group,
)
from glider.trainer.data.schema import Trajectory
from glider.trainer.lora import LoraSettings
from glider.trainer.rl import CriticConfig
from glider.trainer.sequences import Decision, SequenceBuilder, TokenSequence, role_decisions
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
    # the Monte-Carlo advantage at τ 0.5: on the demo data it ranks expert > medium > perturbed where the
    # TD critic does not (docs/results.md; whether its ORL agent beats SFT varied between two trainings);
    # the paper's TD critic is CriticConfig(advantage="td", expectile=0.95)
    critic: CriticConfig = field(default_factory=lambda: CriticConfig(advantage="mc", expectile=0.5))
    actor: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, epochs=4.0, warmup_steps=5))
    # a critic round before every ``critic_every``-th actor epoch: with 4 epochs, the authors' 4 rounds;
    # ``critic_every`` ≥ the epochs: one critic, on the starting policy's features, for the whole run
    critic_every: int = 1
    lora: LoraSettings = field(default_factory=sft_lora)  # for init=scratch
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    executor_reward: IntrinsicReward = field(default_factory=IntrinsicReward)
    # variations kept out of ORL to check the critic's ranking on (the same split as SFT's held-out set)
    heldout_fraction: float = 0.1
    split_seed: int = 0
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
    effective_sample_size: float = 0.0  # (Σw)²/(N·Σw²): 1 = behaviour cloning, near 0 = a few decisions rule
    clipped_share: float | None = None  # GLIDER's exp(A/λ) with a cap: the share of weights at the cap


def weight_stats(adv, weights, cfg: CriticConfig) -> WeightStats:
    import math

    from glider.trainer.critic import effective_sample_size

    if not adv.numel():
        return WeightStats(decisions=0)
    clipped = None
    if cfg.kind == "glider" and cfg.max_weight is not None:
        clipped = float((adv / cfg.lam > math.log(cfg.max_weight)).float().mean())
    return WeightStats(decisions=int(adv.numel()), advantage_mean=float(adv.mean()),
                       advantage_std=float(adv.std()) if adv.numel() > 1 else 0.0,
                       weight_min=float(weights.min()), weight_max=float(weights.max()),
                       effective_sample_size=effective_sample_size(weights), clipped_share=clipped)


def source_group(source: str) -> str:
    """A trajectory source as the diagnostics group it: expert (gold), perturbed (any ε), medium (the
    server's recorded episodes: an SFT agent's own play), or the source itself."""
    if source == "gold":
        return "expert"
    if source.startswith("perturbed"):
        return "perturbed"
    if source == "server":
        return "medium"
    return source or "unknown"


@dataclass
class AdvantageGroup:
    decisions: int
    advantage_mean: float
    advantage_std: float
    weight_mean: float


def by_source(decisions: Sequence[Decision], adv, weights) -> dict[str, AdvantageGroup]:
    """The advantage's mean and spread, and the mean weight, per source group: expert decisions should
    come out above perturbed ones if the critic ranks the data."""
    import torch

    groups: dict[str, list[int]] = {}
    for i, d in enumerate(decisions):
        groups.setdefault(source_group(d.source), []).append(i)
    out = {}
    for name, idx in sorted(groups.items()):
        a, w = adv[torch.tensor(idx)], weights[torch.tensor(idx)]
        out[name] = AdvantageGroup(decisions=len(idx), advantage_mean=float(a.mean()),
                                   advantage_std=float(a.std()) if len(idx) > 1 else 0.0,
                                   weight_mean=float(w.mean()))
    return out


@dataclass
class HeldOutRanking:
    """The critic on decisions it never trained on: Spearman's ρ of A with the observed return G."""
    decisions: int
    rank_correlation: float | None
    advantage_mean: float = 0.0
    # ρ(V(s), G): whether the value head generalises to states it never saw.  With the Monte-Carlo
    # advantage A = G − V(s), ρ(A, G) is large by construction and this is the held-out check
    value_correlation: float | None = None


@dataclass
class CriticRound:
    """One critic round (before actor epoch ``epoch``): its losses, the weights it gave, and its checks."""
    epoch: int
    critic_loss: dict[str, float]
    weights: WeightStats
    by_source: dict[str, AdvantageGroup]
    heldout: HeldOutRanking | None = None
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> CriticRound:
        return cls(epoch=d["epoch"], critic_loss=d["critic_loss"], weights=WeightStats(**d["weights"]),
                   by_source={k: AdvantageGroup(**g) for k, g in d["by_source"].items()},
                   heldout=HeldOutRanking(**d["heldout"]) if d.get("heldout") else None,
                   seconds=d.get("seconds", 0.0))


@dataclass
class ORLRoleReport:
    """One role's critic: its data and every round's losses, weights and checks (the last round's
    losses and weights flat, as the actor's final epoch used them)."""
    sequences: int
    reward_sum: float
    rounds: list[CriticRound] = field(default_factory=list)

    @property
    def critic_loss(self) -> dict[str, float]:
        return self.rounds[-1].critic_loss if self.rounds else {}

    @property
    def weights(self) -> WeightStats:
        return self.rounds[-1].weights if self.rounds else WeightStats(decisions=0)

    def to_dict(self) -> dict:
        weights = {k: v for k, v in asdict(self.weights).items() if v is not None} if self.weights.decisions \
            else {"decisions": 0}  # no decisions, no advantages to describe
        return {"sequences": self.sequences, "critic_loss": self.critic_loss, "reward_sum": self.reward_sum,
                **weights, "rounds": [asdict(r) for r in self.rounds]}


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
    trajectories: dict[str, int]  # source (expert, perturbed, rollout...) -> count, trained on
    config: ORLConfig
    adapters: dict[str, ORLAdapterReport] = field(default_factory=dict)
    heldout_trajectories: int = 0  # kept out for the critic's ranking check

    def to_dict(self) -> dict:
        out = {"mode": self.mode, "init": self.init, "trajectories": self.trajectories,
               "heldout_trajectories": self.heldout_trajectories,
               "config": {"critic": asdict(self.config.critic), "actor": asdict(self.config.actor),
                          "executor_reward": asdict(self.config.executor_reward),
                          "critic_every": self.config.critic_every,
                          "heldout_fraction": self.config.heldout_fraction},
               "adapters": {name: a.to_dict() for name, a in self.adapters.items()}}
        started = {name: a.started_from for name, a in self.adapters.items() if a.started_from}
        if started:
            out["started_from"] = started
        return out


def critic_and_weights(model, sequences: Sequence[TokenSequence], decisions, pad_id: int, cfg: CriticConfig,
                       *, critic=None, progress: bool = True):
    """Fit a critic on the role's decisions (features from ``model``) and return it with the actor weights.
    ``critic`` goes on training from where it is (a later round); None starts a new one."""
    from glider.trainer.critic import Critic, Transitions, decision_features

    state, utterance = decision_features(model, sequences, pad_id, progress=progress)
    data = Transitions.build(state, utterance, decisions, cfg.gamma, cfg.reward_scale)
    critic = critic if critic is not None else Critic(state.size(-1), cfg)
    losses = critic.fit(data, progress=progress)
    adv = critic.advantages(data)
    weights = critic.actor_weights(data, adv)
    return critic, data, adv, weights, losses


def heldout_ranking(model, critic, sequences: Sequence[TokenSequence], decisions: Sequence[Decision], pad_id: int,
                    cfg: CriticConfig) -> HeldOutRanking | None:
    """Spearman's ρ of the critic's A with the observed return G on decisions it never trained on."""
    import torch
    from glider.trainer.critic import Transitions, decision_features, rank_correlation

    if not decisions:
        return None
    state, utterance = decision_features(model, sequences, pad_id)
    data = Transitions.build(state, utterance, decisions, cfg.gamma, cfg.reward_scale)
    adv = critic.advantages(data)
    with torch.no_grad():
        value = critic.v(data.state).squeeze(-1)
    return HeldOutRanking(decisions=len(decisions), rank_correlation=rank_correlation(adv, data.returns),
                          advantage_mean=float(adv.mean()), value_correlation=rank_correlation(value, data.returns))


@dataclass
class _RoleData:
    """One role's training decisions and held-out ones, with the critic that goes on across rounds."""
    sequences: list[TokenSequence]
    decisions: list[Decision]
    heldout_sequences: list[TokenSequence]
    heldout_decisions: list[Decision]
    critic: object | None = None


def critic_round(model, data: _RoleData, epoch: int, pad_id: int, cfg: CriticConfig, *,
                 progress: bool = True) -> CriticRound:
    """One round: features from the current policy, the critic trained on, the actor's weights attached."""
    import time

    t0 = time.monotonic()
    data.critic, transitions, adv, weights, losses = critic_and_weights(
        model, data.sequences, data.decisions, pad_id, cfg, critic=data.critic, progress=progress)
    attach_weights(data.sequences, weights)
    return CriticRound(epoch=epoch, critic_loss=losses, weights=weight_stats(adv, weights, cfg),
                       by_source=by_source(data.decisions, adv, weights),
                       heldout=heldout_ranking(model, data.critic, data.heldout_sequences, data.heldout_decisions,
                                               pad_id, cfg),
                       seconds=time.monotonic() - t0)


class _CriticRounds:
    """The actor loop's epoch hook: before each epoch, one critic round per role (once per epoch, so a
    resumed run's first epoch gets its round from the restored policy).

    Once the run's fingerprint is known (``keep``), every round is also kept in ``record``, so a resumed
    run reports the rounds of the runs before it that it did not redo, not only its own."""

    def __init__(self, name: str, model, per_role: dict[str, _RoleData], reports: dict[str, ORLRoleReport],
                 pad_id: int, cfg: CriticConfig, every: int, progress: bool, record: Path):
        self.name, self.model, self.per_role, self.reports = name, model, per_role, reports
        self.pad_id, self.cfg, self.every, self.progress = pad_id, cfg, every, progress
        self.done: set[int] = set()
        self.record, self.fingerprint = record, None
        self.earlier: dict[str, dict[int, CriticRound]] = {}

    def keep(self, fingerprint: str) -> None:
        """Start keeping rounds under ``fingerprint``; an earlier record of the same run is merged in."""
        self.fingerprint = fingerprint
        try:
            saved = json.loads(self.record.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            saved = {}
        if saved.get("fingerprint") == fingerprint:
            self.earlier = {role: {r["epoch"]: CriticRound.from_dict(r) for r in rounds}
                            for role, rounds in saved.get("rounds", {}).items() if role in self.reports}
        self._save()

    def _save(self) -> None:
        if self.fingerprint is None:
            return
        for role, report in self.reports.items():  # this run's rounds replace the ones it redid
            merged = {**self.earlier.get(role, {}), **{r.epoch: r for r in report.rounds}}
            report.rounds[:] = [merged[e] for e in sorted(merged)]
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "rounds": {
            role: [asdict(r) for r in report.rounds] for role, report in self.reports.items()}}, default=str))
        tmp.replace(self.record)

    def __call__(self, epoch: int) -> None:
        epoch -= epoch % self.every  # a run resumed between rounds redoes the round its epoch belongs to
        if epoch in self.done:
            return
        self.done.add(epoch)
        for role, d in self.per_role.items():
            r = critic_round(self.model, d, epoch, self.pad_id, self.cfg, progress=self.progress)
            self.reports[role].rounds.append(r)
            rho = r.heldout.rank_correlation if r.heldout else None
            rho_v = r.heldout.value_correlation if r.heldout else None
            sources = ", ".join(f"{k} {g.advantage_mean:+.3f}±{g.advantage_std:.3f} (w {g.weight_mean:.2f})"
                                for k, g in r.by_source.items())
            log.info("%s/%s round %d: critic %s, advantage %.3f±%.3f, ESS %.2f, held-out ρ(A, G) %s, ρ(V, G) %s; "
                     "by source: %s", self.name, role, epoch, r.critic_loss, r.weights.advantage_mean,
                     r.weights.advantage_std, r.weights.effective_sample_size, "-" if rho is None else f"{rho:.2f}",
                     "-" if rho_v is None else f"{rho_v:.2f}", sources)
        self._save()


def run_orl(model_dir: Path, trajectories: Sequence[Trajectory], out_dir: Path, cfg: ORLConfig, *,
            hierarchy: HierarchyConfig | None = None, registry: Path | None = None,
            annotator: Annotator | None = None, publish: bool = True, make_current: bool = True,
            start_versions: dict[str, str] | None = None, progress: bool = True) -> ORLReport:
    """Train the mode's adapters with ORL; publish them (stage ``orl``) to ``registry`` when given and
    ``publish``.

    ``init="sft"`` starts each adapter from the registry's current version of it (run SFT first), or
    the version ``start_versions`` names; ``init="scratch"`` from a fresh LoRA.  ``make_current=False``
    publishes without serving (an experiment switches versions itself).  Returns what each adapter's
    critic rounds and actor did (also ``<out_dir>/orl_metrics.json``).
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
    if cfg.critic_every < 1:
        raise ValueError(f"critic_every must be at least 1 epoch, not {cfg.critic_every}")
    hierarchy = hierarchy or HierarchyConfig(mode=cfg.mode)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_trajs, heldout_trajs = split_by_group(trajectories, cfg.heldout_fraction, cfg.split_seed)
    episodes = episodes_for(train_trajs, annotator, cfg.segmentation)
    heldout_episodes = episodes_for(heldout_trajs, annotator, cfg.segmentation)
    sources: dict[str, int] = {}
    for t in train_trajs:
        sources[t.source] = sources.get(t.source, 0) + 1

    def decisions(eps, role):
        return role_decisions(eps, role, SequenceBuilder(tokenizer, cfg.max_len), hierarchy, cfg.executor_reward)

    # every adapter's decisions up front: the actor's time budget is shared by data size, as in SFT
    jobs = {name: {role: _RoleData(*decisions(episodes, role), *decisions(heldout_episodes, role))
                   for role in roles} for name, roles in ADAPTER_ROLES[cfg.mode].items()}
    total_tokens = sum(len(s) for per_role in jobs.values() for d in per_role.values() for s in d.sequences)
    report = ORLReport(mode=cfg.mode, init=cfg.init, trajectories=sources, config=cfg,
                       heldout_trajectories=len(heldout_trajs))
    for name, per_role in jobs.items():
        start_adapter = started_from = None
        if cfg.init == "sft":
            start = AdapterRegistry(registry).get(name, (start_versions or {}).get(name))
            start_adapter, started_from = start.path, start.version
        model = load_policy(model_dir, adapter=start_adapter, lora=cfg.lora, seed=cfg.actor.seed)
        roles = {role: ORLRoleReport(sequences=len(d.sequences), reward_sum=sum(x.reward for x in d.decisions))
                 for role, d in per_role.items()}
        new_round = _CriticRounds(name, model, per_role, roles, tokenizer.pad_token_id, cfg.critic,
                                  cfg.critic_every, progress, out_dir / name / "critic_rounds.json")
        t0 = time.monotonic()
        new_round(0)  # the weights exist before the loop starts (it trains weighted when they do)
        critic_seconds = time.monotonic() - t0
        all_seqs = [s for d in per_role.values() for s in d.sequences]
        actor_cfg = cfg.actor
        if actor_cfg.max_minutes is not None:  # the stage's budget, shared by the adapters by data size
            actor_cfg = TrainConfig(**{**asdict(actor_cfg), "max_minutes": actor_cfg.max_minutes * sum(
                len(s) for s in all_seqs) / max(1, total_tokens)})
        fingerprint = run_fingerprint(actor_cfg, all_seqs, base_model_identity(model_dir), cfg.init,
                                      str(start_adapter), name, "orl", asdict(cfg.critic),
                                      asdict(cfg.executor_reward), cfg.critic_every)
        if state.is_main_process:
            new_round.keep(fingerprint)
        result = train(model, all_seqs, actor_cfg, out_dir / name, pad_id=tokenizer.pad_token_id,
                       name=f"orl-{name}", fingerprint=fingerprint, on_epoch=new_round)
        critic_seconds += sum(r.seconds for rep in roles.values() for r in rep.rounds[1:])
        entry = ORLAdapterReport(roles=roles, critic_seconds=critic_seconds, tokens=sum(len(s) for s in all_seqs),
                                 training=result, started_from=started_from)
        if not state.is_main_process:
            continue
        for role, d in per_role.items():
            d.critic.save(out_dir / name / f"critic-{role}.safetensors")
        adapter_dir = out_dir / name / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
        if registry is not None and publish:
            from glider.trainer.publish import publish_adapter

            entry.published = publish_adapter(registry, name, adapter_dir, model_dir, make_current=make_current,
                                              stage="orl" if cfg.init == "sft" else "orl-scratch",
                                              metrics=entry.scalars(), reuse_identical=True).version
        report.adapters[name] = entry
        del model
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "orl_metrics.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report
