"""Stage 3, O2O: offline-to-online fine-tuning, the learner (the algorithm). The live loop that
plays through the server and feeds it is ``glider.trainer.online``.

One iteration:

1. the runner plays episodes on the online task families through the server
   (``glider.clients.play``), and the server records every step;
2. the trainer reads the new episodes from the server's logs
   (``glider.trainer.data.logs``; segmented by the subgoals the planner really
   served), turns them into decisions per adapted role, and computes their
   features with the current actor;
3. it updates the critic on a FIFO of recent online episodes (and the offline
   data, when given), then the actor, at most ``updates_per_episode`` steps per
   new episode, on batches drawn from the FIFO and, ``offline_share`` of the
   time, from the offline data;
4. publishes the adapters; the server's watcher hot-swaps them, and the next
   iteration is served by the new versions (the loop waits until ``/readyz``
   reports them).

The update rule is ``CriticConfig.kind``: ``glider`` (expectile V, clipped
exp(A/λ) weights), ``awac`` (mean V, batch-normalised exp(A/λ)) or ``ac``
(V critic, TD-error policy gradient); everything else — data, budget, the
schedule of episodes — is shared, so their curves compare.  The executor
stays frozen unless ``adapt_executor`` (the paper adapts the high level).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from glider.server.policy.controller import HierarchyConfig
from glider.server.policy.modes import ADAPTER_ROLES
from glider.trainer.data.hierarchy import SegmentationConfig
from glider.trainer.data.schema import Trajectory
from glider.trainer.rl import CriticConfig, RLMethod
from glider.trainer.sequences import SequenceBuilder, TokenSequence, role_decisions
from glider.trainer.sft import episodes_for

log = logging.getLogger(__name__)


@dataclass
class O2OConfig:
    method: RLMethod = RLMethod.glider
    tasks: list[str] = field(default_factory=lambda: ["find-plant"])  # the online (held-out) task families
    split: str = "train"  # whose variations are played online; each iteration plays new ones
    iterations: int = 6
    episodes_per_iteration: int = 4
    max_steps: int = 30
    fifo_episodes: int = 32
    updates_per_episode: int = 16  # actor steps per new online episode
    critic_steps: int = 300  # critic updates per iteration (the first iteration: CriticConfig.steps)
    adapt_executor: bool = False
    actor_lr: float = 1e-4
    batch_tokens: int = 4096
    offline_share: float = 0.5  # share of actor batches from the offline data (when there is any)
    # online episodes are sampled (each with its own seed, recorded), so that positive-weight updates
    # see alternatives to the policy's own greedy choice; None plays them with the server's settings
    temperature: float | None = 0.7
    # the publish gate: after each update the server plays ``gate_episodes`` greedy episodes per online
    # family (the split's last variations, away from the schedule, which starts at its first); an update
    # scoring more than ``gate_margin`` (0..1 score) below the last accepted one is rolled back.  0: no gate
    gate_episodes: int = 0
    gate_margin: float = 0.05
    # the learning curve's own measure: after each update (and once before the first) the server plays
    # ``eval_episodes`` greedy episodes per online family on ``eval_split``'s first variations, which
    # online play (on ``split``) never visits; the sampled online episodes' scores say what the learner
    # saw, these say what the policy it published does.  0: no evaluation
    eval_episodes: int = 0
    eval_split: str = "dev"
    critic: CriticConfig = field(default_factory=CriticConfig)
    transport: str = "rest"
    profile: str | None = None  # the server's agent profile it plays and publishes into (None: the default)
    parallel: int = 2
    swap_timeout_s: float = 60.0
    seed: int = 0
    max_len: int = 2048

    def __post_init__(self):
        self.method = RLMethod(self.method)  # a plain string (config file, bench) is checked here

    def gate_schedule(self) -> list[tuple[str, int]]:
        """(task family, position) of the gate's episodes: the split's last variations (negative positions
        count from its end), the same for every iteration."""
        return [(task, -1 - i) for task in self.tasks for i in range(self.gate_episodes)]

    def eval_schedule(self) -> list[tuple[str, int]]:
        """(task family, position) of the greedy evaluation's episodes on ``eval_split``, the same every time."""
        return [(task, i) for task in self.tasks for i in range(self.eval_episodes)]

    def schedule(self, iteration: int) -> list[tuple[str, int]]:
        """(task family, variation position) of the iteration's episodes: new variations each iteration,
        the same schedule for every method."""
        out = []
        for i in range(self.episodes_per_iteration):
            k = iteration * self.episodes_per_iteration + i
            out.append((self.tasks[k % len(self.tasks)], k // len(self.tasks)))
        return out


@dataclass
class CriticUpdate:
    """One role's critic in an update: the decisions it fitted, its losses, its advantages' spread."""
    decisions: int
    critic_loss: dict[str, float]
    advantage_std: float


@dataclass
class ActorUpdate:
    """One adapter's actor in an update."""
    actor_steps: int
    actor_loss: float


@dataclass
class UpdateReport:
    """What ``OnlineLearner.update`` did with a batch of new episodes."""
    new_episodes: int = 0
    critics: dict[str, CriticUpdate] = field(default_factory=dict)  # role -> its critic's update
    actors: dict[str, ActorUpdate] = field(default_factory=dict)  # adapter -> its actor's steps

    def to_dict(self) -> dict:
        """The layout ``curve.json`` has always had: the critics under ``roles``, each actor under its
        adapter's name, and nothing but the count when there was nothing new."""
        if not self.new_episodes:
            return {"new_episodes": 0}
        return {"new_episodes": self.new_episodes, "roles": {r: asdict(c) for r, c in self.critics.items()},
                **{name: asdict(a) for name, a in self.actors.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> UpdateReport:
        """From ``curve.json``; earlier curves kept the critics under ``roles`` and each actor under its
        adapter's name."""
        critics = data.get("critics", data.get("roles", {}))
        actors = data.get("actors") or {k: v for k, v in data.items() if isinstance(v, dict) and "actor_steps" in v}
        return cls(new_episodes=data.get("new_episodes", 0),
                   critics={role: CriticUpdate(**c) for role, c in critics.items()},
                   actors={name: ActorUpdate(**a) for name, a in actors.items()})


@dataclass
class RoleData:
    """A role's decisions with features, for the critic, and its sequences, for the actor."""

    sequences: list[TokenSequence]
    decisions: list
    state: object  # torch.Tensor (N, H)
    utterance: object

    def transitions(self, gamma: float, reward_scale: float = 1.0):
        from glider.trainer.critic import Transitions

        return Transitions.build(self.state, self.utterance, self.decisions, gamma, reward_scale)


def _concat(parts: Sequence[RoleData], gamma: float, reward_scale: float):
    from glider.trainer.critic import Transitions

    return Transitions.concat([p.transitions(gamma, reward_scale) for p in parts])


class OnlineLearner:
    """The trainer side of the loop: one actor per adapted adapter and one critic per adapted role."""

    def __init__(self, model_dir: Path, registry: Path, cfg: O2OConfig, *, mode: str = "separate",
                 hierarchy: HierarchyConfig | None = None, offline: Sequence[Trajectory] = (),
                 out_dir: Path | None = None):
        import torch
        from glider.server.adapters.registry import AdapterRegistry
        from glider.trainer.critic import Critic
        from glider.trainer.orl import load_policy
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.model_dir, self.registry = Path(model_dir), Path(registry)
        self.hierarchy = hierarchy or HierarchyConfig(mode=mode)
        self.out_dir = Path(out_dir) if out_dir is not None else self.registry.parent / "runs" / f"o2o-{cfg.method}"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.segmentation = SegmentationConfig(method="recorded", max_len=self.hierarchy.c_max)
        roles = {name: [r for r in rs if cfg.adapt_executor or r != "executor"]
                 for name, rs in ADAPTER_ROLES[mode].items()}
        self.roles = {name: rs for name, rs in roles.items() if rs}  # adapter -> the roles it learns from
        reg = AdapterRegistry(self.registry)
        self.models, self.optimizers, self.start_versions = {}, {}, {}
        for name in self.roles:
            start = reg.get(name)
            self.start_versions[name] = start.version
            self.models[name] = load_policy(self.model_dir, adapter=start.path, lora=None, seed=cfg.seed)
            params = [p for p in self.models[name].parameters() if p.requires_grad]
            self.optimizers[name] = torch.optim.AdamW(params, lr=cfg.actor_lr)
        critic_cfg = CriticConfig(**{**asdict(cfg.critic), "kind": cfg.method})
        dim = next(iter(self.models.values())).config.hidden_size
        self.critics = {role: Critic(dim, critic_cfg) for rs in self.roles.values() for role in rs}
        self.fifo: dict[str, deque[RoleData]] = {role: deque(maxlen=cfg.fifo_episodes) for role in self.critics}
        self.offline: dict[str, RoleData] = {}
        self.rng = random.Random(cfg.seed)
        self.seen: set[str] = set()
        if offline:
            episodes = episodes_for(offline, seg=SegmentationConfig(max_len=self.hierarchy.c_max))
            for name, rs in self.roles.items():
                for role in rs:
                    self.offline[role] = self._role_data(name, role, episodes)
                    self.critics[role].fit(self.offline[role].transitions(critic_cfg.gamma, critic_cfg.reward_scale))

    def _role_data(self, name: str, role: str, episodes) -> RoleData:
        from glider.trainer.critic import decision_features

        seqs, decisions = role_decisions(episodes, role, SequenceBuilder(self.tokenizer, self.cfg.max_len),
                                         self.hierarchy)
        state, utterance = decision_features(self.models[name], seqs, self.tokenizer.pad_token_id)
        return RoleData(seqs, decisions, state, utterance)

    # -- one update from new episodes --------------------------------------------------------
    def update(self, trajectories: Sequence[Trajectory]) -> UpdateReport:
        """Critic and actor updates from newly recorded episodes; returns what happened."""
        from glider.trainer.orl import attach_weights

        new = [t for t in trajectories if t.id not in self.seen and t.steps]
        self.seen.update(t.id for t in new)
        if not new:
            return UpdateReport()
        episodes = episodes_for(new, seg=self.segmentation)
        report = UpdateReport(new_episodes=len(new))
        for name, rs in self.roles.items():
            for role in rs:
                for ep in episodes:  # one FIFO entry per episode
                    self.fifo[role].append(self._role_data(name, role, [ep]))
            pools = []
            for role in rs:
                critic = self.critics[role]
                c = critic.cfg
                online = list(self.fifo[role])
                offline = [self.offline[role]] if role in self.offline else []
                data = _concat(online + offline, c.gamma, c.reward_scale)
                losses = critic.fit(data, self.cfg.critic_steps)
                adv = critic.advantages(data)
                # the transitions are the parts' decisions in order, as are their sequences' spans
                attach_weights([s for part in online + offline for s in part.sequences],
                               critic.actor_weights(data, adv))
                pools.append(([s for part in online for s in part.sequences],
                              [s for part in offline for s in part.sequences]))
                report.critics[role] = CriticUpdate(decisions=len(data), critic_loss=losses,
                                                    advantage_std=float(adv.std()) if len(data) > 1 else 0.0)
            online_seqs = [s for on, _ in pools for s in on]
            offline_seqs = [s for _, off in pools for s in off]
            report.actors[name] = self._actor_steps(name, online_seqs, offline_seqs,
                                                    self.cfg.updates_per_episode * len(new))
        return report

    def _actor_steps(self, name: str, online: list[TokenSequence], offline: list[TokenSequence], steps: int
                     ) -> ActorUpdate:
        import torch
        from glider.trainer.training import batch_loss, bucket_batches

        model, optimizer = self.models[name], self.optimizers[name]
        device = next(model.parameters()).device
        pools = [p for p in (online, offline) if p]
        batches = {id(p): bucket_batches([len(s) for s in p], self.cfg.batch_tokens, self.rng.randrange(10**6), 0)
                   for p in pools}
        model.train()
        losses = []
        for _ in range(steps):
            pool = offline if offline and (not online or self.rng.random() < self.cfg.offline_share) else online
            batch = [pool[i] for i in self.rng.choice(batches[id(pool)])]
            loss, _, _ = batch_loss(model, batch, self.tokenizer.pad_token_id, device, weighted=True)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
        return ActorUpdate(actor_steps=steps, actor_loss=sum(losses) / max(1, len(losses)))

    def restore(self, versions: dict[str, str]) -> None:
        """Back to the registry's ``versions`` of the adapted adapters (a rolled-back update): their
        weights, and a fresh optimiser (its moments belonged to the rejected steps).  The critic and the
        FIFO keep what they learnt: the episodes were real."""
        import torch
        from glider.server.adapters.registry import AdapterRegistry
        from glider.trainer.orl import load_policy

        reg = AdapterRegistry(self.registry)
        for name in self.models:
            self.models[name] = load_policy(self.model_dir, adapter=reg.get(name, versions[name]).path, lora=None,
                                            seed=self.cfg.seed)
            params = [p for p in self.models[name].parameters() if p.requires_grad]
            self.optimizers[name] = torch.optim.AdamW(params, lr=self.cfg.actor_lr)

    def publish(self, iteration: int) -> dict[str, str]:
        from glider.trainer.publish import publish_adapter

        versions = {}
        for name, model in self.models.items():
            adapter_dir = self.out_dir / f"iter-{iteration:03d}" / name
            model.save_pretrained(adapter_dir, safe_serialization=True)
            versions[name] = publish_adapter(self.registry, name, adapter_dir, self.model_dir,
                                             stage=f"o2o-{self.cfg.method}",
                                             metrics={"iteration": iteration}).version
        return versions
