"""The sentence-level critic of GLIDER's RL stages: Q_φ(s, u) and V_ψ(s) heads on the backbone's hidden state.

A decision is one whole utterance u generated after a prompt s: a subgoal at the
high level, an action (with its ``; true|false`` marker) at the low level.  Its
features are the backbone's last-layer hidden states, detached (the poster's
bars): ``state`` at the last prompt token (what V_ψ(s) reads) and
``utterance`` at the token that ends u (what Q_φ(s, u) reads: a causal model's
state there has seen s and u).

The equations, each next to its code below:

    L_Q(φ) = E[(r + γ^k (1 − d) V_ψ̄(s') − Q_φ(s, u))²]                  (TD, ``q_loss``)
    L_V(ψ) = E[L_2^τ(Q_φ̄(s, u) − V_ψ(s))],  L_2^τ(x) = |τ − 1(x < 0)|·x²   (``expectile_loss``)
    θ̄ ← (1 − ρ)·θ̄ + ρ·θ                                                  (Polyak, ``polyak_update``)
    A = Q_φ̄(s, u) − V_ψ(s),   w = min(exp(A / λ), w_max)                   (``awr_weights``)

or, with ``CriticConfig.advantage = "mc"``, no Q at all: V_ψ is fitted by the same expectile loss to
the return G the decision actually led to (``observed_returns``: r + γ^k G_next along its episode),
and A = G − V_ψ(s), the AWR of Peng et al. (2019) with Monte-Carlo returns.  Offline every episode
is complete, so G is known; it carries the outcome without the bootstrapping error of a TD critic
on small data.

k is how many environment steps the decision spanned (a subgoal's segment
length at the high level: a semi-MDP discount; 1 for actions), d whether its
level's episode ended there (an executor episode ends with its subgoal).  With
τ > 0.5 V_ψ tracks an upper expectile of Q over the data's own utterances, so
the advantage favours the best utterances the data holds without ever asking
Q about utterances it has not seen (in-sample, as in IQL).

Three update rules share the heads (``CriticConfig.kind``), for O2O's comparison:

* ``glider`` — the above (expectile τ, clipped exp-advantage weights);
* ``awac`` — Q/V with a mean (τ = 0.5) V, i.e. the value of the data's own
  policy, and exp(A/λ) weights normalised over the batch without clipping;
* ``ac`` — a V critic only, one-step TD error δ = r + γ^k V_ψ̄(s') − V_ψ(s) as
  the advantage and a plain policy-gradient actor (weights δ, scaled by their
  standard deviation; negative weights push the utterance's likelihood down).

Because the features are detached and computed once per batch of data (by the
policy that starts the stage), fitting the critic is seconds of small-MLP work
on cached tensors; the actor's step costs what an SFT step costs.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from glider.trainer.rl import CriticConfig
from glider.trainer.sequences import Decision, TokenSequence
from torch import nn

log = logging.getLogger(__name__)


# --- the equations -------------------------------------------------------------------
def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """L_2^τ(x) = |τ − 1(x < 0)|·x², averaged; x = Q_φ̄(s,u) − V_ψ(s)."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.pow(2)).mean()


def td_target(reward: torch.Tensor, next_value: torch.Tensor, done: torch.Tensor,
              discount: torch.Tensor) -> torch.Tensor:
    """r + γ^k (1 − d) V_ψ̄(s'): ``discount`` is γ^k per decision, ``done`` 1.0 where the episode ended."""
    return reward + discount * (1.0 - done) * next_value


def awr_weights(advantage: torch.Tensor, lam: float, max_weight: float | None) -> torch.Tensor:
    """exp(A / λ), clipped at ``max_weight`` (the exponent too, so a large A cannot overflow)."""
    exponent = advantage / lam
    if max_weight is not None:
        exponent = exponent.clamp(max=math.log(max_weight))
    return exponent.exp()


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """θ̄ ← (1 − ρ)·θ̄ + ρ·θ for every parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.mul_(1.0 - rate).add_(s, alpha=rate)


# --- heads and data ------------------------------------------------------------------
def value_head(dim: int, hidden: int) -> nn.Module:
    """A 3-layer MLP on a (normalised) hidden state, as the paper's critic."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, 1))


@dataclass
class Transitions:
    """Decisions as tensors: features, reward, γ^k, done, index of the next decision (−1: none)."""

    state: torch.Tensor  # (N, H) hidden state at the prompt's last token
    utterance: torch.Tensor  # (N, H) hidden state at the utterance's last token
    reward: torch.Tensor
    discount: torch.Tensor
    done: torch.Tensor
    next: torch.Tensor
    returns: torch.Tensor  # G, each decision's observed discounted return along its episode

    def __len__(self) -> int:
        return self.reward.numel()

    @classmethod
    def build(cls, state, utterance, decisions: Sequence[Decision], gamma: float, reward_scale: float = 1.0
              ) -> Transitions:
        # a decision whose successor is unknown (the episode hit its step cap, or the successor was
        # cut at the context length) is terminal: the evaluator's episode is over there too
        nxt = torch.tensor([d.next for d in decisions], dtype=torch.long)
        return cls(state=state, utterance=utterance,
                   reward=torch.tensor([d.reward * reward_scale for d in decisions], dtype=torch.float32),
                   discount=torch.tensor([gamma ** d.steps for d in decisions], dtype=torch.float32),
                   done=torch.tensor([1.0 if d.done or d.next < 0 else 0.0 for d in decisions]),
                   next=nxt, returns=observed_returns(decisions, gamma) * reward_scale)

    @classmethod
    def concat(cls, parts: Sequence[Transitions]) -> Transitions:
        offsets, at = [], 0
        for p in parts:
            offsets.append(at)
            at += len(p)
        return cls(state=torch.cat([p.state for p in parts]), utterance=torch.cat([p.utterance for p in parts]),
                   reward=torch.cat([p.reward for p in parts]), discount=torch.cat([p.discount for p in parts]),
                   done=torch.cat([p.done for p in parts]), returns=torch.cat([p.returns for p in parts]),
                   next=torch.cat([torch.where(p.next >= 0, p.next + o, p.next) for p, o in zip(parts, offsets,
                                                                                                 strict=True)]))


@torch.no_grad()
def decision_features(model, sequences: Sequence[TokenSequence], pad_id: int, batch_tokens: int = 8192,
                      progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(state, utterance) hidden states of every target span, in (sequence, span) order; no gradient."""
    from glider.trainer.training import bucket_batches, collate
    from tqdm import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_seq: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    batches = bucket_batches([len(s) for s in sequences], batch_tokens, 0, 0)
    for batch in tqdm(batches, desc="critic features", unit="batch", disable=not progress):
        ids, mask, _ = collate([sequences[i] for i in batch], pad_id)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        hidden = out.hidden_states[-1].float().cpu()
        for row, i in enumerate(batch):
            spans = sequences[i].spans
            starts = torch.tensor([s - 1 for s, _ in spans])  # last prompt token before the utterance
            ends = torch.tensor([e - 1 for _, e in spans])  # the utterance's last token (its stop)
            per_seq[i] = (hidden[row, starts], hidden[row, ends])
    model.train(was_training)
    dim = model.config.hidden_size
    if not per_seq:
        return torch.zeros(0, dim), torch.zeros(0, dim)
    order = [per_seq[i] for i in range(len(sequences))]
    return torch.cat([s for s, _ in order]), torch.cat([u for _, u in order])


# --- the critic ----------------------------------------------------------------------
class Critic(nn.Module):
    def __init__(self, dim: int, cfg: CriticConfig):
        super().__init__()
        self.cfg = cfg
        # the heads' initialisation from the config's seed, not from whatever the global generator went
        # through before (a model load, a data loader): the TD critic's fit depends on it (docs/results.md)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.v = value_head(dim, cfg.hidden)
            self.q = value_head(dim, cfg.hidden) if cfg.kind != "ac" and cfg.advantage == "td" else None
        self.v_target = copy.deepcopy(self.v).requires_grad_(False)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False) if self.q is not None else None
        self.optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=cfg.lr)

    @property
    def tau(self) -> float:
        return 0.5 if self.cfg.kind == "awac" else self.cfg.expectile

    @property
    def monte_carlo(self) -> bool:
        return self.cfg.advantage == "mc" and self.cfg.kind != "ac"

    def losses(self, data: Transitions, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        s, u = data.state[idx], data.utterance[idx]
        if self.monte_carlo:  # V_ψ(s) to the observed return's τ-expectile
            return {"v_loss": expectile_loss(data.returns[idx] - self.v(s).squeeze(-1), self.tau)}
        nxt = data.next[idx]
        with torch.no_grad():  # V_ψ̄(s') from the target head; 0 where there is no s'
            next_state = data.state[nxt.clamp(min=0)]
            next_v = self.v_target(next_state).squeeze(-1) * (nxt >= 0)
            target = td_target(data.reward[idx], next_v, data.done[idx], data.discount[idx])
        v = self.v(s).squeeze(-1)
        if self.q is None:  # AC: V by TD
            return {"v_loss": (target - v).pow(2).mean()}
        q = self.q(u).squeeze(-1)
        with torch.no_grad():
            q_bar = self.q_target(u).squeeze(-1)
        return {"q_loss": (target - q).pow(2).mean(), "v_loss": expectile_loss(q_bar - v, self.tau)}

    def fit(self, data: Transitions, steps: int | None = None, *, progress: bool = False) -> dict[str, float]:
        """``steps`` minibatch updates of both heads (Polyak after each); returns the last losses."""
        from tqdm import tqdm

        steps = self.cfg.steps if steps is None else steps
        if len(data) == 0 or steps <= 0:
            return {}
        gen = torch.Generator().manual_seed(self.cfg.seed)
        last: dict[str, float] = {}
        # the heads' ops are tiny: one thread is as fast, and immune to the OpenMP spin-waiting that makes
        # them ~100x slower when another process (a server, a training run) shares the cores
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for _ in tqdm(range(steps), desc=f"critic ({self.cfg.kind})", disable=not progress, unit="step"):
                idx = torch.randperm(len(data), generator=gen)[: self.cfg.batch_size]
                losses = self.losses(data, idx)
                self.optimizer.zero_grad()
                sum(losses.values()).backward()
                self.optimizer.step()
                polyak_update(self.v_target, self.v, self.cfg.polyak)
                if self.q is not None:
                    polyak_update(self.q_target, self.q, self.cfg.polyak)
                last = {k: float(v.detach()) for k, v in losses.items()}
        finally:
            torch.set_num_threads(threads)
        return last

    @torch.no_grad()
    def advantages(self, data: Transitions) -> torch.Tensor:
        if self.monte_carlo:  # A = G − V(s)
            return data.returns - self.v(data.state).squeeze(-1)
        if self.q is None:  # δ = r + γ^k V̄(s') − V(s)
            next_v = self.v_target(data.state[data.next.clamp(min=0)]).squeeze(-1) * (data.next >= 0)
            return td_target(data.reward, next_v, data.done, data.discount) - self.v(data.state).squeeze(-1)
        return self.q_target(data.utterance).squeeze(-1) - self.v(data.state).squeeze(-1)

    @torch.no_grad()
    def actor_weights(self, data: Transitions, advantage: torch.Tensor | None = None) -> torch.Tensor:
        """Per-decision actor weights under this critic's update rule (from ``advantage`` when the
        caller has it already)."""
        adv = self.advantages(data) if advantage is None else advantage
        cfg = self.cfg
        if cfg.kind == "ac":
            return adv / adv.std().clamp(min=1e-6) if adv.numel() > 1 else adv
        if cfg.kind == "awac":  # unclipped; normalised like AWAC's batch softmax (max-shifted: no overflow)
            w = (adv / cfg.lam - (adv / cfg.lam).max()).exp()
            return w / w.mean()
        w = awr_weights(adv, cfg.lam, cfg.max_weight)
        return w / w.mean() if cfg.normalize else w

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path))

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(path)))


# --- diagnostics: does the critic rank the data? ---------------------------------------------
def observed_returns(decisions: Sequence[Decision], gamma: float) -> torch.Tensor:
    """G_i = r_i + γ^k_i (1 − d_i) G_next(i): each decision's discounted return as its episode went on,
    along the ``next`` links (a chain cut at the context length ends there)."""
    returns = [0.0] * len(decisions)
    for i in range(len(decisions) - 1, -1, -1):  # successors come later in (sequence, span) order
        d = decisions[i]
        follow = returns[d.next] if d.next >= 0 and not d.done else 0.0
        returns[i] = d.reward + gamma ** d.steps * follow
    return torch.tensor(returns, dtype=torch.float32)


def effective_sample_size(weights: torch.Tensor) -> float:
    """(Σw)² / (N·Σw²): 1 when every decision weighs the same, 1/N when one weight carries the batch."""
    w = weights.double().clamp(min=0)
    if not w.numel() or float(w.pow(2).sum()) == 0.0:
        return 0.0
    return float(w.sum() ** 2 / (w.numel() * w.pow(2).sum()))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..N−1 with ties given their average rank (as Spearman's ρ needs: returns tie a lot)."""
    values, inverse, counts = torch.unique(x.double(), sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    return (first + (counts - 1) / 2.0)[inverse]


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman's ρ of two equally long vectors; None when either is constant or too short."""
    if x.numel() < 3:
        return None
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / norm if norm > 0 else None
