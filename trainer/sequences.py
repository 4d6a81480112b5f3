"""Training sequences built with the server's own prompt code (imported, never copied).

Every target the server would ask for becomes a (prompt, target) pair, with
the prompt built exactly as ``PolicyController`` builds it at serve time (same
windows, same sanitising, same observation limit).  Because the prompt formats
are append-only, consecutive pairs of one planner episode or one executor
segment chain into a single sequence: pair i+1's prompt starts with pair i's
prompt + target, so the sequence is ``p0 t0 p1' t1 p1'' t2 ...`` and one forward
pass trains every target of it.  Where a window slides (a segment longer than
``history_window``, an episode with more than ``plan_window`` subgoals) the
prefix check fails and a new sequence starts: the model is trained on exactly
the prompts it will be served.

Pieces are tokenised separately (prompt pieces end in ``:`` or a newline and
targets start with a space, both clean pre-tokeniser boundaries), which is how
the engine sees them: the prompt alone, then generated tokens.  Labels are
-100 on prompt tokens: loss on target tokens only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from glider.server.policy.controller import HierarchyConfig
from glider.server.policy.modes import Role
from glider.server.policy.prompts import (
    STOP,
    executor_prompt,
    flat_prompt,
    format_executor_target,
    planner_prompt,
    sanitize,
)
from glider.server.policy.state import Segment, Turn
from glider.trainer.data.hierarchy import HierarchicalEpisode, IntrinsicReward
from glider.trainer.data.schema import Trajectory

IGNORE = -100


@dataclass
class Pair:
    prompt: str
    target: str  # " <utterance>\n": what the model generates after the prompt, stop included
    # what RL needs of the utterance as one decision (ignored by SFT): the reward it earned, whether
    # its level's episode ended with it, and how many environment steps it spanned (γ^steps)
    reward: float = 0.0
    done: bool = False
    steps: int = 1


@dataclass
class TokenSequence:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    role: str = ""
    spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) token range of each target
    weights: list[float] | None = None  # one per target (span): an advantage weight; None = 1 (SFT)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _obs(cfg: HierarchyConfig, text: str) -> str:
    return sanitize(text, cfg.prompt_observation_chars)


def planner_pairs(ep: HierarchicalEpisode, cfg: HierarchyConfig) -> list[Pair]:
    """The planner's prompts over one episode, as the controller builds them."""
    task = sanitize(ep.traj.task)
    finished: list[Segment] = []
    pairs = []
    for k, seg in enumerate(ep.segments):
        steps = seg.steps(ep.traj)
        observation = steps[0].observation
        prompt = planner_prompt(task, finished, observation, obs_limit=cfg.prompt_observation_chars)
        pairs.append(Pair(prompt, f" {sanitize(seg.subgoal)}{STOP}", reward=sum(s.reward for s in steps),
                          done=steps[-1].done or k == len(ep.segments) - 1, steps=len(steps)))
        finished.append(Segment(subgoal=seg.subgoal, start_observation=_obs(cfg, observation),
                                turns=[Turn(observation=_obs(cfg, s.observation), action=sanitize(s.action))
                                       for s in steps], completed=True))
        del finished[: max(0, len(finished) - cfg.plan_window)]
    return pairs


def executor_pairs(ep: HierarchicalEpisode, cfg: HierarchyConfig,
                   reward: IntrinsicReward = IntrinsicReward()) -> list[list[Pair]]:
    """The executor's prompts, one list per segment (its context restarts with each subgoal).

    As RL decisions, each segment is one low-level episode ending with the segment, and each
    step's reward is D^l's intrinsic r̂ as ``reward`` defines it.
    """
    task = sanitize(ep.traj.task)
    out = []
    for seg in ep.segments:
        steps = seg.steps(ep.traj)
        turns: list[Turn] = []
        pairs = []
        r_hat = reward.per_step(ep.traj, seg)
        for i, step in enumerate(steps):
            done = i == len(steps) - 1  # the low-level episode ends here; "; true" only if it reached its subgoal
            marked = done and seg.completed
            window = turns[-cfg.history_window:] if cfg.history_window else []
            prompt = executor_prompt(task, seg.subgoal, window, step.observation,
                                     obs_limit=cfg.prompt_observation_chars)
            pairs.append(Pair(prompt, f" {format_executor_target(step.action, marked)}{STOP}",
                              reward=r_hat[i], done=done))
            turns.append(Turn(observation=_obs(cfg, step.observation), action=sanitize(step.action), done=marked))
        out.append(pairs)
    return out


def flat_pairs(traj: Trajectory, cfg: HierarchyConfig) -> list[Pair]:
    task = sanitize(traj.task)
    history: list[Turn] = []
    pairs = []
    for step in traj.steps:
        window = history[-cfg.history_window:] if cfg.history_window else []
        prompt = flat_prompt(task, window, step.observation, obs_limit=cfg.prompt_observation_chars)
        pairs.append(Pair(prompt, f" {sanitize(step.action)}{STOP}", reward=step.reward, done=step.done))
        history.append(Turn(observation=_obs(cfg, step.observation), action=sanitize(step.action)))
    return pairs


def chain(pairs: Sequence[Pair]) -> list[list[tuple[str, bool]]]:
    """Group consecutive pairs into sequences of (text piece, is_target) where prompts extend."""
    sequences: list[list[tuple[str, bool]]] = []
    text = None
    for pair in pairs:
        if text is not None and pair.prompt.startswith(text):
            rest = pair.prompt[len(text):]
            if rest:
                sequences[-1].append((rest, False))
        else:
            sequences.append([(pair.prompt, False)])
        sequences[-1].append((pair.target, True))
        text = pair.prompt + pair.target
    return sequences


class SequenceBuilder:
    """Tokenises chained pieces into a ``TokenSequence``, at most ``max_len`` tokens.

    In a chain the sequence so far *is* the served prompt of the next target, so
    a target that does not fit could not be served within the context either:
    it and the rest of the chain are dropped (counted in ``truncated``).
    """

    def __init__(self, tokenizer, max_len: int = 2048):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.truncated = 0  # targets dropped because their prompt + target exceed max_len

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def build(self, pieces: Sequence[tuple[str, bool]], role: str) -> list[TokenSequence]:
        seq = TokenSequence(role=role)
        for n, (text, is_target) in enumerate(pieces):
            ids = self._encode(text)
            if len(seq) + len(ids) > self.max_len:
                self.truncated += sum(1 for _, target in pieces[n:] if target)
                break
            if is_target:
                seq.spans.append((len(seq), len(seq) + len(ids)))
            seq.input_ids += ids
            seq.labels += ids if is_target else [IGNORE] * len(ids)
        return [seq] if seq.target_tokens else []


def role_sequences(episodes: Iterable[HierarchicalEpisode], roles: Sequence[str], builder: SequenceBuilder,
                   cfg: HierarchyConfig) -> list[TokenSequence]:
    """Token sequences for the given roles (planner, executor, flat) over the episodes."""
    out: list[TokenSequence] = []
    for ep in episodes:
        if Role.planner.value in roles:
            for pieces in chain(planner_pairs(ep, cfg)):
                out += builder.build(pieces, Role.planner.value)
        if Role.executor.value in roles:
            for seg_pairs in executor_pairs(ep, cfg):
                for pieces in chain(seg_pairs):
                    out += builder.build(pieces, Role.executor.value)
        if Role.flat.value in roles:
            for pieces in chain(flat_pairs(ep.traj, cfg)):
                out += builder.build(pieces, Role.flat.value)
    return out


@dataclass
class Decision:
    """One utterance as an RL decision, aligned with the target spans of ``role_decisions``' sequences."""

    reward: float
    done: bool
    steps: int = 1
    next: int = -1  # index of the same level-episode's next decision; -1: none (terminal or cut)
    source: str = ""  # the trajectory's source (gold, perturbed-ε, server): the critic's diagnostics group by it


def _level_episodes(ep: HierarchicalEpisode, role: str, cfg: HierarchyConfig,
                    reward: IntrinsicReward) -> list[list[Pair]]:
    """The role's decision sequences in one episode: the planner's whole episode, each executor
    segment (a low-level episode of its own), or the flat agent's whole episode."""
    if role == Role.planner.value:
        return [planner_pairs(ep, cfg)]
    if role == Role.executor.value:
        return executor_pairs(ep, cfg, reward)
    if role == Role.flat.value:
        return [flat_pairs(ep.traj, cfg)]
    raise ValueError(f"unknown role {role!r}")


def role_decisions(episodes: Iterable[HierarchicalEpisode], role: str, builder: SequenceBuilder,
                   cfg: HierarchyConfig, reward: IntrinsicReward = IntrinsicReward()
                   ) -> tuple[list[TokenSequence], list[Decision]]:
    """The role's training sequences (as ``role_sequences``) and one ``Decision`` per target span,
    in (sequence, span) order, each linked to its successor where the successor was kept.  The
    executor's rewards are ``reward``'s r̂; the planner's the environment's Σr over its segment."""
    seqs: list[TokenSequence] = []
    decisions: list[Decision] = []
    for ep in episodes:
        for pairs in _level_episodes(ep, role, cfg, reward):
            kept: list[int | None] = []
            at = 0
            for pieces in chain(pairs):
                targets = sum(1 for _, is_target in pieces if is_target)
                built = builder.build(pieces, role)
                n_kept = len(built[0].spans) if built else 0
                seqs += built
                for j in range(targets):
                    if j < n_kept:
                        p = pairs[at + j]
                        kept.append(len(decisions))
                        decisions.append(Decision(reward=p.reward, done=p.done, steps=p.steps,
                                                  source=ep.traj.source))
                    else:
                        kept.append(None)
                at += targets
            for a, b in zip(kept, kept[1:], strict=False):
                if a is not None and b is not None and not decisions[a].done:
                    decisions[a].next = b
    return seqs, decisions


def transcript(traj: Trajectory) -> str:
    """Plain environment text for the backbone warm-up: no role markers, no prompt format."""
    lines = [sanitize(traj.task)]
    for step in traj.steps:
        lines.append(sanitize(step.observation))
        lines.append("> " + sanitize(step.action))
    lines.append(sanitize(traj.final_observation))
    return "\n".join(lines) + "\n"
