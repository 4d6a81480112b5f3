"""From trajectories to GLIDER's hierarchical datasets D^h and D^l (and the flat baseline's).

1. **Segmentation** cuts a trajectory into subgoal segments.  ``score`` (the
   default) ends a segment on each step whose action raised the score (a task
   milestone), merges segments shorter than ``min_len`` into their successor and
   splits segments longer than ``max_len`` (the executor's step budget ``c_max``
   at serve time, so training never shows a segment the server would cut).
   ``recorded`` uses the subgoals the server's planner actually wrote (episode
   logs); ``fixed`` cuts every ``max_len`` steps.
2. **Annotation** names each segment: ``TemplateAnnotator`` (deterministic,
   from the segment's actions and objects) or ``LLMAnnotator`` (any
   OpenAI-compatible chat endpoint, e.g. ``vllm serve`` of a real backbone;
   an answer that is not one short line falls back to the template).
3. **Transitions**: D^h (task, o_t, g_t, Σr over the segment, o_{t+c}) and D^l
   (g_t, o_t, a_t, r̂_t, o_{t+1}) with r̂ = 1 on the step that completes the
   subgoal; the flat dataset (task, o_t, a_t, r_t, o_{t+1}).  Schema:
   ``glider.trainer.data.schema``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from glider.server.policy.prompts import sanitize
from glider.trainer.data.schema import Step, Trajectory

log = logging.getLogger(__name__)


# --- segmentation --------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentationConfig:
    method: str = "auto"  # auto | score | recorded | fixed
    min_len: int = 2
    max_len: int = 10  # = c_max at serve time


def _split_long(bounds: list[tuple[int, int]], max_len: int) -> list[tuple[int, int]]:
    out = []
    for start, end in bounds:
        n = end - start
        if n <= max_len:
            out.append((start, end))
            continue
        pieces = -(-n // max_len)  # balanced chunks, none longer than max_len
        size, extra = divmod(n, pieces)
        at = start
        for i in range(pieces):
            step = size + (1 if i < extra else 0)
            out.append((at, at + step))
            at += step
    return out


def segment(traj: Trajectory, cfg: SegmentationConfig = SegmentationConfig()) -> list[tuple[int, int]]:
    """Half-open step ranges [start, end) covering the trajectory, one per subgoal."""
    n = len(traj.steps)
    if n == 0:
        return []
    method = cfg.method
    if method == "auto":
        method = "recorded" if all(s.subgoal for s in traj.steps) else "score"
    if method == "fixed":
        return _split_long([(0, n)], cfg.max_len)
    if method == "recorded":
        cuts = [t + 1 for t, s in enumerate(traj.steps[:-1])
                if s.subgoal_done or traj.steps[t + 1].new_subgoal
                or traj.steps[t + 1].subgoal != s.subgoal]
        bounds = list(zip([0, *cuts], [*cuts, n], strict=True))
        return _split_long(bounds, cfg.max_len)
    if method != "score":
        raise ValueError(f"unknown segmentation {cfg.method!r} (auto | score | recorded | fixed)")
    cuts = [t + 1 for t, s in enumerate(traj.steps[:-1]) if s.reward > 0]
    bounds = list(zip([0, *cuts], [*cuts, n], strict=True))
    merged: list[tuple[int, int]] = []
    pending_start: int | None = None
    for start, end in bounds:
        start = pending_start if pending_start is not None else start
        if end - start < cfg.min_len and end < n:
            pending_start = start  # too small: fold into the next segment
            continue
        pending_start = None
        merged.append((start, end))
    if merged and merged[-1][1] - merged[-1][0] < cfg.min_len and len(merged) > 1:
        (s0, _), (_, e1) = merged[-2], merged[-1]
        merged[-2:] = [(s0, e1)]  # a tiny tail joins its predecessor
    return _split_long(merged, cfg.max_len)


# --- annotation ----------------------------------------------------------------------
class Annotator(Protocol):
    def __call__(self, task: str, actions: Sequence[str]) -> str: ...


_NAV_RE = re.compile(r"^(?:go to|teleport to|open door to|close door to)\s+(?P<place>.+)$")
_DEST_RE = re.compile(r"^(?:go to|teleport to)\s+(?P<place>.+)$")
_TRIVIAL = {"look around", "inventory", "task"}


class TemplateAnnotator:
    """Deterministic subgoal text from a segment's actions: what it does, in order, naming the objects.

    A run of navigation actions collapses to its destination, so
    ``["open door to kitchen", "go to kitchen", "pick up thermometer"]`` becomes
    ``"go to kitchen, then pick up thermometer"``.  The last ``keep`` such events
    are kept (the ones that reach the milestone), verbatim so the objects are named.
    """

    def __init__(self, keep: int = 3, max_chars: int = 160):
        self.keep, self.max_chars = keep, max_chars

    def __call__(self, task: str, actions: Sequence[str]) -> str:
        events: list[str] = []
        navigating = False
        for action in actions:
            a = action.strip()
            if _NAV_RE.match(a):
                if (m := _DEST_RE.match(a)) is not None:
                    event = f"go to {m.group('place')}"
                    if navigating and events and events[-1].startswith("go to "):
                        events[-1] = event  # a run of moves: only where it ends matters
                    else:
                        events.append(event)
                    navigating = True
                continue
            navigating = False
            if a in _TRIVIAL or (events and events[-1] == a):
                continue
            events.append(a)
        if not events:
            events.append("look around" if any(a.strip() == "look around" for a in actions) else "explore")
        return sanitize(", then ".join(events[-self.keep:]), self.max_chars)


class LLMAnnotator:
    """Subgoal text from an OpenAI-compatible chat endpoint, with the template as the fallback.

    ``base_url`` is the server root (``http://host:8001/v1``).  Answers are cached
    by (task, actions) so a re-run costs nothing; an answer that is not one
    short line of text is replaced by the template annotator's.
    """

    SYSTEM = ("You label segments of an agent's trajectory with the subgoal they achieve. "
              "Answer with one short imperative sentence naming the objects, nothing else.")
    EXAMPLE = ("Task: boil water\nActions: open door to kitchen; go to kitchen; pick up thermometer",
               "go to the kitchen and pick up the thermometer")

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout: float = 30.0,
                 max_chars: int = 120, client=None, fallback: Annotator | None = None):
        import httpx

        self.model, self.max_chars = model, max_chars
        self.fallback = fallback or TemplateAnnotator(max_chars=max_chars)
        self.client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                             headers={"Authorization": f"Bearer {api_key}"})
        self.cache: dict[str, str] = {}
        self.fallbacks = 0

    def __call__(self, task: str, actions: Sequence[str]) -> str:
        key = hashlib.sha256(json.dumps([task, list(actions)]).encode()).hexdigest()
        if key in self.cache:
            return self.cache[key]
        text = None
        try:
            text = self._ask(task, actions)
        except Exception as exc:  # an annotator outage must not stop dataset building
            log.warning("LLM annotator failed (%s); using the template", exc)
        if text is None:
            self.fallbacks += 1
            text = self.fallback(task, actions)
        self.cache[key] = text
        return text

    def _ask(self, task: str, actions: Sequence[str]) -> str | None:
        user = f"Task: {sanitize(task, 400)}\nActions: " + "; ".join(sanitize(a) for a in actions)
        body = {"model": self.model, "temperature": 0, "max_tokens": 48, "messages": [
            {"role": "system", "content": self.SYSTEM},
            {"role": "user", "content": self.EXAMPLE[0]}, {"role": "assistant", "content": self.EXAMPLE[1]},
            {"role": "user", "content": user}]}
        response = self.client.post("/chat/completions", json=body)
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"] or ""
        lines = [line for line in content.strip().splitlines() if line.strip()]
        if len(lines) != 1:
            return None
        text = sanitize(lines[0]).strip(" .\"'")
        return text if 3 <= len(text) <= self.max_chars and re.search(r"[a-zA-Z]", text) else None


# --- hierarchical episodes and transitions ------------------------------------------------
@dataclass
class SubgoalSegment:
    subgoal: str
    start: int  # first step index
    end: int  # one past the last step index

    def steps(self, traj: Trajectory) -> list[Step]:
        return traj.steps[self.start: self.end]


@dataclass
class HierarchicalEpisode:
    traj: Trajectory
    segments: list[SubgoalSegment] = field(default_factory=list)

    def next_observation(self, t: int) -> str:
        steps = self.traj.steps
        return steps[t + 1].observation if t + 1 < len(steps) else self.traj.final_observation


def annotate(traj: Trajectory, annotator: Annotator | None = None,
             cfg: SegmentationConfig = SegmentationConfig()) -> HierarchicalEpisode:
    annotator = annotator or TemplateAnnotator()
    episode = HierarchicalEpisode(traj)
    for start, end in segment(traj, cfg):
        recorded = traj.steps[start].subgoal
        actions = [s.action for s in traj.steps[start:end]]
        text = recorded if recorded and cfg.method in ("auto", "recorded") else annotator(traj.task, actions)
        episode.segments.append(SubgoalSegment(subgoal=sanitize(text), start=start, end=end))
    return episode


def high_level_transitions(ep: HierarchicalEpisode) -> list[dict]:
    """D^h: one transition per segment (task, o_t, g_t, Σr, o_{t+c})."""
    out = []
    steps = ep.traj.steps
    for k, seg in enumerate(ep.segments):
        out.append({
            "traj": ep.traj.id, "task": ep.traj.task, "segment": k,
            "observation": steps[seg.start].observation,
            "context": [s.subgoal for s in ep.segments[:k]],
            "subgoal": seg.subgoal,
            "reward": round(sum(s.reward for s in seg.steps(ep.traj)), 6),
            "next_observation": ep.next_observation(seg.end - 1),
            "done": steps[seg.end - 1].done or k == len(ep.segments) - 1,
        })
    return out


def subgoal_reward(traj: Trajectory, seg: SubgoalSegment) -> float:
    """D^l's intrinsic reward r̂ at the segment's end: did the executor complete its subgoal?

    −1 when the episode failed inside the segment (the score went negative: ScienceWorld's
    wrong ``focus on``); 1 when the subgoal was completed — an expert segment always is (its
    subgoal names what its actions did), a server-recorded one when the executor declared it
    done without losing score, any other one (perturbed, or cut by score) when it reached a
    score milestone; else 0 (it ran out of steps).
    """
    steps = seg.steps(traj)
    if any(s.score < 0 for s in steps):
        return -1.0
    if traj.source == "gold":
        return 1.0
    if steps[-1].subgoal_done is not None:
        return 1.0 if steps[-1].subgoal_done and sum(s.reward for s in steps) >= 0 else 0.0
    return 1.0 if steps[-1].reward > 0 else 0.0


def low_level_transitions(ep: HierarchicalEpisode) -> list[dict]:
    """D^l: one transition per step (g_t, o_t, a_t, r̂_t, o_{t+1}); r̂ (``subgoal_reward``) on the segment's
    last step, 0 before it."""
    out = []
    for k, seg in enumerate(ep.segments):
        r_hat = subgoal_reward(ep.traj, seg)
        for t in range(seg.start, seg.end):
            step = ep.traj.steps[t]
            last = t == seg.end - 1
            out.append({
                "traj": ep.traj.id, "task": ep.traj.task, "segment": k, "t": t, "subgoal": seg.subgoal,
                "observation": step.observation, "history": t - seg.start, "action": step.action,
                "reward": r_hat if last else 0.0, "env_reward": step.reward,
                "next_observation": ep.next_observation(t), "subgoal_done": last, "done": step.done,
            })
    return out


def flat_transitions(traj: Trajectory) -> list[dict]:
    """The flat baseline's data: (task, o_t, a_t, r_t, o_{t+1}) with no subgoal."""
    steps = traj.steps
    return [{
        "traj": traj.id, "task": traj.task, "t": t, "observation": s.observation, "history": t,
        "action": s.action, "reward": s.reward,
        "next_observation": steps[t + 1].observation if t + 1 < len(steps) else traj.final_observation,
        "done": s.done,
    } for t, s in enumerate(steps)]


# --- splits and files ------------------------------------------------------------------
def split_by_group(trajs: Iterable[Trajectory], val_fraction: float, seed: int = 0
                   ) -> tuple[list[Trajectory], list[Trajectory]]:
    """Train/validation by variation (``Trajectory.group``), never by step; stable under a seed."""
    train, val = [], []
    for traj in trajs:
        h = int(hashlib.sha256(f"{seed}/{traj.group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if h < val_fraction else train).append(traj)
    return train, val


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def write_datasets(out: Path, episodes: dict[str, list[HierarchicalEpisode]]) -> dict[str, dict[str, int]]:
    """``<out>/<split>/{trajectories,dh,dl,flat}.jsonl`` for each split; returns row counts."""
    counts: dict[str, dict[str, int]] = {}
    for split, eps in episodes.items():
        d = Path(out) / split
        d.mkdir(parents=True, exist_ok=True)
        counts[split] = {
            "trajectories": _write_jsonl(d / "trajectories.jsonl", (e.traj.model_dump() for e in eps)),
            "segments": _write_jsonl(d / "segments.jsonl", (
                {"traj": e.traj.id, "segments": [vars(s) for s in e.segments]} for e in eps)),
            "dh": _write_jsonl(d / "dh.jsonl", (r for e in eps for r in high_level_transitions(e))),
            "dl": _write_jsonl(d / "dl.jsonl", (r for e in eps for r in low_level_transitions(e))),
            "flat": _write_jsonl(d / "flat.jsonl", (r for e in eps for r in flat_transitions(e.traj))),
        }
    return counts
