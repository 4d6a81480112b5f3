"""Does the executor know when its subgoal is done?  Two measurements on held-out gold segments.

* **The completion marker, teacher-forced.**  Every executor prompt of the held-out
  segments (the prompts the server builds, from ``glider.trainer.sequences``) is
  completed greedily; the generated ``; true|false`` is compared with the label
  (``true`` exactly on the last step of a segment that reached its goal):
  precision and recall of ``true``, and how often the action is the gold one.
* **Completion in the environment.**  A held-out trajectory's variation is
  loaded, its gold path replayed up to a segment's start, then the real
  ``PolicyController`` runs the executor on the segment's gold subgoal for up
  to ``c_max`` steps in ScienceWorld.  A segment is *reached* when the executor
  issues the gold segment's goal action (its last), and *completed* when it also
  marks the subgoal done there or after.

Generation is greedy with the in-memory peft model (``LocalGenerator``), so the
numbers come with training, before anything is published or served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from glider.server.policy.controller import (
    HierarchyConfig,
    PolicyController,
    PolicyGeneration,
    PolicyRequest,
)
from glider.server.policy.modes import Role
from glider.server.policy.prompts import parse_executor_output, sanitize
from glider.trainer.data.hierarchy import HierarchicalEpisode
from glider.trainer.sequences import executor_pairs

log = logging.getLogger(__name__)


class LocalGenerator:
    """The policy's ``generate`` on an in-memory (peft) model: batched, greedy unless asked to sample."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def complete(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        import torch

        tok = self.tokenizer
        out: list[str] = []
        was_training = self.model.training
        self.model.eval()
        side = tok.padding_side
        tok.padding_side = "left"  # generation continues each row right after its prompt
        try:
            for at in range(0, len(prompts), self.batch_size):
                batch = list(prompts[at: at + self.batch_size])
                enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(self.model.device) for k, v in enc.items()}
                with torch.no_grad():
                    ids = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                              pad_token_id=tok.pad_token_id)
                for row in ids[:, enc["input_ids"].shape[1]:]:
                    out.append(tok.decode(row, skip_special_tokens=True).split("\n", 1)[0])
        finally:
            tok.padding_side = side
            self.model.train(was_training)
        return out

    async def __call__(self, requests: Sequence[PolicyRequest]) -> list[PolicyGeneration]:
        texts = self.complete([r.prompt for r in requests], max(r.max_tokens for r in requests))
        return [PolicyGeneration(text=t) for t in texts]


@dataclass
class MarkerMetrics:
    """How well the executor's ``; true`` matches the labels, teacher-forced on held-out pairs."""
    pairs: int
    labelled_true: int
    precision: float  # nan when it never said ``; true``
    recall: float  # nan when no pair was labelled ``; true``
    action_accuracy: float


@dataclass
class SegmentCompletion:
    """Share of held-out gold segments the executor reaches, and marks done, from its gold subgoal."""
    segments: int
    reached: float
    completed: float


def marker_metrics(generator: LocalGenerator, episodes: Sequence[HierarchicalEpisode], cfg: HierarchyConfig,
                   limit: int = 1500) -> MarkerMetrics | None:
    """Precision / recall of the generated ``; true`` against the labels, teacher-forced (None: no pairs)."""
    pairs = [p for ep in episodes for seg in executor_pairs(ep, cfg) for p in seg][:limit]
    if not pairs:
        return None
    texts = generator.complete([p.prompt for p in pairs], cfg.executor_max_tokens)
    tp = fp = fn = same_action = 0
    for pair, text in zip(pairs, texts, strict=True):
        want_action, want_done = parse_executor_output(pair.target.strip())
        got_action, got_done = parse_executor_output(text)
        tp += got_done and want_done
        fp += got_done and not want_done
        fn += want_done and not got_done
        same_action += got_action == want_action
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return MarkerMetrics(pairs=len(pairs), labelled_true=tp + fn, precision=precision, recall=recall,
                         action_accuracy=same_action / len(pairs))


def completion_share(generator: LocalGenerator, episodes: Sequence[HierarchicalEpisode], cfg: HierarchyConfig,
                     limit: int = 60) -> SegmentCompletion | None:
    """Share of held-out gold segments the executor reaches (and marks done) given their gold subgoal
    (None: no completed ScienceWorld segment to try)."""
    import asyncio

    from glider.clients.envs.scienceworld import ScienceWorld, open_env

    segments = [(ep, k) for ep in episodes if ep.traj.env == "scienceworld" for k in range(len(ep.segments))
                if ep.segments[k].completed]
    step = max(1, len(segments) // max(1, limit))
    segments = segments[::step][:limit]  # spread over trajectories and positions
    if not segments:
        return None
    jvm = open_env(step_limit=200)
    reached = completed = 0
    try:
        for ep, k in segments:
            seg = ep.segments[k]
            world = ScienceWorld(ep.traj.task_name, ep.traj.variation, env=jvm)
            observation = world.reset().observation
            for gold in ep.traj.steps[: seg.start]:
                observation = world.step(gold.action).observation
            goal_action = sanitize(ep.traj.steps[seg.end - 1].action)
            hit, marked = _run_segment(asyncio.run, generator, cfg, ep.traj.task, seg.subgoal, observation, world,
                                       goal_action)
            reached += hit
            completed += marked
    finally:
        jvm.close()
    return SegmentCompletion(segments=len(segments), reached=reached / len(segments),
                             completed=completed / len(segments))


def _run_segment(run, generator, cfg: HierarchyConfig, task: str, subgoal: str, observation: str, world,
                 goal_action: str) -> tuple[bool, bool]:
    """The real controller on one subgoal (the planner's answer scripted to the gold subgoal)."""
    ctl = PolicyController(cfg)
    state = ctl.new_state("diagnostic", task)

    async def generate(requests):
        executor = [r for r in requests if r.role is not Role.planner]
        texts = iter(await generator(executor) if executor else [])
        return [PolicyGeneration(text=f" {subgoal}") if r.role is Role.planner else next(texts) for r in requests]

    hit = False
    for _ in range(cfg.c_max):
        decision = run(ctl.step(state, observation, 0.0, False, generate))
        state = decision.state
        hit = hit or decision.action == goal_action
        if hit and decision.subgoal_done:
            return True, True
        if decision.subgoal_done:
            break
        result = world.step(decision.action)
        observation = result.observation
        if result.done:
            break
    return hit, False
