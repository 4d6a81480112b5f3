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
   (g_t, o_t, a_t, r̂_t, o_{t+1}) with the intrinsic reward r̂ of ``IntrinsicReward``
   (a cost per step, and the subgoal's outcome on the segment's last step); the
   flat dataset (task, o_t, a_t, r_t, o_{t+1}).  Schema: ``glider.trainer.data.schema``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from glider.server.policy.prompts import sanitize
from glider.trainer.data.schema import Step, Trajectory

log = logging.getLogger(__name__)


# --- segmentation --------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentationConfig:
    method: str = "auto"  # auto | events | score | recorded | fixed
    min_len: int = 2  # score: shorter milestone segments merge into the next
    max_len: int = 10  # = c_max at serve time


class Span(NamedTuple):
    """A segment's half-open step range, and whether its last step reached its subgoal.

    Only a completed segment's last action is trained as ``; true``: a segment cut
    because it outgrew ``max_len`` ends ``; false``, as the server then re-plans at
    ``c_max`` on its own."""

    start: int
    end: int
    completed: bool = True


_NAV_RE = re.compile(r"^(?:go to|teleport to|open door to|close door to)\s+(?P<place>.+)$")
_DEST_RE = re.compile(r"^(?:go to|teleport to)\s+(?P<place>.+)$")
_TRIVIAL = {"look around", "inventory", "task"}
#: actions that look or make something reachable, in preparation for the next key action
_PREP_PREFIXES = ("look at ", "examine ", "read ", "open ", "close ")


def _is_nav(action: str) -> bool:
    return _NAV_RE.match(action.strip()) is not None


def _is_prep(action: str) -> bool:
    a = action.strip()
    return a in _TRIVIAL or (a.startswith(_PREP_PREFIXES) and not _is_nav(a))


def _chunks(start: int, end: int, max_len: int, completed: bool = True,
            boundaries: Sequence[int] = ()) -> list[Span]:
    """[start, end) cut to pieces of at most ``max_len`` steps.  Cuts go at the last allowed ``boundaries``
    (ends of a finished sub-goal, e.g. arriving in a room) that fits, else in balanced pieces; a piece
    that ends anywhere but a boundary did not complete anything."""
    out, at = [], start
    while end - at > max_len:
        fits = [b for b in boundaries if at < b <= at + max_len and b < end]
        if fits:
            out.append(Span(at, fits[-1], True))
            at = fits[-1]
            continue
        pieces = -(-(end - at) // max_len)
        cut = at + -(-(end - at) // pieces)
        out.append(Span(at, cut, False))
        at = cut
    out.append(Span(at, end, completed))
    return out


def _event_spans(traj: Trajectory, max_len: int) -> list[Span]:
    """Goal-shaped segments: a navigation run (with the looking around before it) ends on arrival; any
    other segment gathers preparation (look, examine, open) up to one key action (pick up, move, focus,
    activate, use, pour, wait, ...) or a rewarded step.  Each ends where its goal is reached, so its last
    action is a true ``; true``.  Repeats stay separate segments (each thermometer reading completes
    "measure the temperature"): merged, identical steps would be labelled done in one place and not
    done in another."""
    steps = [s.action.strip() for s in traj.steps]
    n = len(steps)
    spans: list[Span] = []
    t = start = 0
    while t < n:
        if _is_nav(steps[t]):
            end = t
            while end + 1 < n and _is_nav(steps[end + 1]):
                end += 1
            arrivals = [i + 1 for i in range(start, end + 1) if _DEST_RE.match(steps[i])]
            spans += _chunks(start, end + 1, max_len, True, arrivals)
            t = start = end + 1
            continue
        if not _is_prep(steps[t]) or traj.steps[t].reward > 0:
            spans += _chunks(start, t + 1, max_len)
            start = t + 1
        t += 1
    if start < n:  # trailing preparation (looked around at the end): a segment of its own
        spans += _chunks(start, n, max_len)
    return spans


def _score_spans(traj: Trajectory, cfg: SegmentationConfig) -> list[Span]:
    n = len(traj.steps)
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
    return [c for start, end in merged for c in _chunks(start, end, cfg.max_len)]


def segment(traj: Trajectory, cfg: SegmentationConfig = SegmentationConfig()) -> list[Span]:
    """Spans covering the trajectory, one per subgoal.

    ``events`` (the default for expert data) cuts where a goal is reached (see ``_event_spans``);
    ``score`` where the score rises (a task milestone); ``recorded`` where the server's planner wrote a
    new subgoal (episode logs: complete when the executor said so); ``fixed`` every ``max_len`` steps
    (never complete).  No span is longer than ``max_len``.
    """
    n = len(traj.steps)
    if n == 0:
        return []
    method = cfg.method
    if method == "auto":
        method = "recorded" if all(s.subgoal for s in traj.steps) else "events"
    if method == "events":
        return _event_spans(traj, cfg.max_len)
    if method == "score":
        return _score_spans(traj, cfg)
    if method == "fixed":
        return [Span(a, b, False) for a, b, _ in _chunks(0, n, cfg.max_len)]
    if method == "recorded":
        cuts = [t + 1 for t, s in enumerate(traj.steps[:-1])
                if s.subgoal_done or traj.steps[t + 1].new_subgoal
                or traj.steps[t + 1].subgoal != s.subgoal]
        return [c for start, end in zip([0, *cuts], [*cuts, n], strict=True)
                for c in _chunks(start, end, cfg.max_len, bool(traj.steps[end - 1].subgoal_done))]
    raise ValueError(f"unknown segmentation {cfg.method!r} (auto | events | score | recorded | fixed)")


# --- annotation ----------------------------------------------------------------------
class Annotator(Protocol):
    def __call__(self, task: str, actions: Sequence[str]) -> str: ...


def _obj(text: str, words: int = 3) -> str:
    """An object's name, short: its own name without where it is ("substance in metal pot" -> "substance")."""
    text = re.sub(r"\s+in inventory\b", "", text.strip())
    text = re.split(r"\s+(?:in|on)\s+", text, maxsplit=1)[0]
    return " ".join(text.split()[-words:])


#: (action pattern, goal template); the first match names the goal
_GOALS: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [(re.compile(p), f) for p, f in (
    (r"^(?:go to|teleport to) (?P<x>.+)$", lambda m: f"go to the {_obj(m['x'])}"),
    (r"^open door to (?P<x>.+)$", lambda m: f"open the door to the {_obj(m['x'])}"),
    (r"^close door to (?P<x>.+)$", lambda m: f"close the door to the {_obj(m['x'])}"),
    (r"^pick up (?P<x>.+)$", lambda m: f"get the {_obj(m['x'])}"),
    (r"^(?:put down|drop) (?P<x>.+)$", lambda m: f"put down the {_obj(m['x'])}"),
    (r"^move (?P<x>.+?) to (?P<y>.+)$", lambda m: f"put the {_obj(m['x'], 2)} in the {_obj(m['y'], 2)}"),
    (r"^pour (?P<x>.+) (?:into|in) (?P<y>.+)$",
     lambda m: f"pour the {_obj(m['x'], 2)} into the {_obj(m['y'], 2)}"),
    (r"^focus on (?P<x>.+)$", lambda m: f"focus on the {_obj(m['x'])}"),
    (r"^deactivate (?P<x>.+)$", lambda m: f"turn off the {_obj(m['x'])}"),
    (r"^activate (?P<x>.+)$", lambda m: f"turn on the {_obj(m['x'])}"),
    (r"^use (?P<x>.*thermometer.*?) on (?P<y>.+)$", lambda m: f"measure the temperature of the {_obj(m['y'])}"),
    (r"^use (?P<x>.+?) on (?P<y>.+)$", lambda m: f"use the {_obj(m['x'], 2)} on the {_obj(m['y'], 2)}"),
    (r"^connect (?P<x>.+?) to (?P<y>.+)$", lambda m: f"connect the {_obj(m['x'], 2)} to the {_obj(m['y'], 2)}"),
    (r"^disconnect (?P<x>.+)$", lambda m: f"disconnect the {_obj(m['x'])}"),
    (r"^mix (?P<x>.+)$", lambda m: f"mix what is in the {_obj(m['x'])}"),
    (r"^wait\d*$", lambda m: "wait for a while"),
    (r"^look around$", lambda m: "look around the room"),
    (r"^(?:look at|examine) (?P<x>.+)$", lambda m: f"examine the {_obj(m['x'])}"),
    (r"^read (?P<x>.+)$", lambda m: f"read the {_obj(m['x'])}"),
    (r"^open (?P<x>.+)$", lambda m: f"open the {_obj(m['x'])}"),
    (r"^close (?P<x>.+)$", lambda m: f"close the {_obj(m['x'])}"),
    (r"^eat (?P<x>.+)$", lambda m: f"eat the {_obj(m['x'])}"),
    (r"^inventory$", lambda m: "check what you carry"),
    (r"^(?P<verb>\w+) (?P<x>.+)$", lambda m: f"{m['verb']} the {_obj(m['x'])}"),
)]


class TemplateAnnotator:
    """Deterministic subgoal text that **names the goal** a segment reaches, in one short clause.

    The goal is what the segment's last action achieves (a navigation run: where it
    arrives; ``pick up thermometer``: "get the thermometer"; repeated thermometer
    readings: "measure the temperature of the water"), a look around at the end
    naming nothing when an earlier action does.  Objects are named without their
    location, at most ``max_words`` words in all, and never an action copied word
    for word: the planner learns what to reach, the executor how.
    """

    def __init__(self, max_words: int = 8):
        self.max_words = max_words

    def __call__(self, task: str, actions: Sequence[str]) -> str:
        acts = [a.strip().lower() for a in actions if a.strip()]
        if not acts:
            return "explore the surroundings"
        meaningful = [a for a in acts if a not in _TRIVIAL]
        last = meaningful[-1] if meaningful else acts[-1]
        for pattern, goal in _GOALS:
            if (m := pattern.match(last)) is not None:
                text = goal(m)
                break
        else:
            text = "do what the task needs next"
        words = text.split()[: self.max_words]
        if " ".join(words) in acts:  # one-word objects can make a template equal to its action
            words = ["then", *words][: self.max_words]
        return sanitize(" ".join(words))


class LLMAnnotator:
    """Subgoal text from an OpenAI-compatible chat endpoint, with the template as the fallback.

    ``base_url`` is the server root (``http://host:8001/v1``).  Answers are cached
    by (task, actions) so a re-run costs nothing; an answer that is not one
    short line of text is replaced by the template annotator's.
    """

    SYSTEM = ("You label segments of an agent's trajectory with the goal they reach. Answer with one "
              "short imperative clause of at most 8 words that names the goal, not the actions, nothing else.")
    EXAMPLE = ("Task: boil water\nActions: open door to kitchen; go to kitchen",
               "go to the kitchen")

    def __init__(self, base_url: str, model: str, *, api_key: str = "EMPTY", timeout: float = 30.0,
                 max_chars: int = 120, client=None, fallback: Annotator | None = None):
        import httpx

        self.model, self.max_chars = model, max_chars
        self.fallback = fallback or TemplateAnnotator()
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
    completed: bool = True  # its last step reached the subgoal (trained as "; true")

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
    for start, end, completed in segment(traj, cfg):
        recorded = traj.steps[start].subgoal
        actions = [s.action for s in traj.steps[start:end]]
        text = recorded if recorded and cfg.method in ("auto", "recorded") else annotator(traj.task, actions)
        episode.segments.append(SubgoalSegment(subgoal=sanitize(text), start=start, end=end, completed=completed))
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
    """The subgoal's outcome at the segment's end: 1 completed, 0 not reached, −1 the task failed.

    −1 when the episode failed inside the segment (the score went negative: ScienceWorld's
    wrong ``focus on``); 1 when the subgoal was completed — an expert segment is unless the
    segmentation cut it short (its subgoal names what its actions did), a server-recorded one
    when the executor declared it done without losing score, any other one (perturbed, or cut
    by score) when it reached a score milestone; else 0 (it ran out of steps).
    """
    steps = seg.steps(traj)
    if any(s.score < 0 for s in steps):
        return -1.0
    if traj.source == "gold":
        return 1.0 if seg.completed else 0.0
    if steps[-1].subgoal_done is not None:
        return 1.0 if steps[-1].subgoal_done and sum(s.reward for s in steps) >= 0 else 0.0
    return 1.0 if steps[-1].reward > 0 else 0.0


@dataclass(frozen=True)
class IntrinsicReward:
    """D^l's intrinsic reward r̂, per step t of a segment that starts at t₀ and ends at t₁ − 1:

        r̂_t = −κ + 1(t = t₁ − 1) · R(outcome),   R = ``completed`` | ``unreached`` | ``failed``

    The outcome is ``subgoal_reward``'s.  Without the step cost κ a detour costs only the discount
    (about 1 − γ per step), so nearly every recorded segment's decisions look equally good and the
    executor's advantages are flat; with it, each extra step inside a segment costs κ, and a subgoal
    given up at the step budget costs every step it took plus ``unreached``.
    """

    step_cost: float = 0.05  # κ
    completed: float = 1.0
    unreached: float = 0.0
    failed: float = -1.0

    def outcome(self, traj: Trajectory, seg: SubgoalSegment) -> float:
        return {1.0: self.completed, 0.0: self.unreached, -1.0: self.failed}[subgoal_reward(traj, seg)]

    def per_step(self, traj: Trajectory, seg: SubgoalSegment) -> list[float]:
        """r̂_t for each step of the segment, in order."""
        n = seg.end - seg.start
        return [-self.step_cost + (self.outcome(traj, seg) if i == n - 1 else 0.0) for i in range(n)]


def low_level_transitions(ep: HierarchicalEpisode, reward: IntrinsicReward = IntrinsicReward()) -> list[dict]:
    """D^l: one transition per step (g_t, o_t, a_t, r̂_t, o_{t+1}), r̂ as ``reward`` defines it."""
    out = []
    for k, seg in enumerate(ep.segments):
        r_hat = reward.per_step(ep.traj, seg)
        for t in range(seg.start, seg.end):
            step = ep.traj.steps[t]
            last = t == seg.end - 1
            out.append({
                "traj": ep.traj.id, "task": ep.traj.task, "segment": k, "t": t, "subgoal": seg.subgoal,
                "observation": step.observation, "history": t - seg.start, "action": step.action,
                "reward": r_hat[t - seg.start], "env_reward": step.reward,
                "next_observation": ep.next_observation(t), "subgoal_done": last and seg.completed,
                "done": step.done,
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
        (val if is_held_out(traj.group, val_fraction, seed) else train).append(traj)
    return train, val


def is_held_out(group: str, val_fraction: float, seed: int = 0) -> bool:
    """Whether ``split_by_group`` keeps this group (``env/task/split/variation``) out of training."""
    return int(hashlib.sha256(f"{seed}/{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < val_fraction


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
