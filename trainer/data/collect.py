"""Expert data: replay gold action sequences and record every step as a ``Trajectory``.

With ``perturb=ε`` the same replay becomes suboptimal data for offline RL: before
each gold action, with probability ε the agent takes a random valid action
instead (a detour to another room, a look, a pick-up, or a wrong ``focus on``
that fails the task), then carries on with the gold path, which may no longer
fit the world; the environment's real rewards label what came of it.

ScienceWorld gives a gold path per variation (``env.load(..., generateGoldPath=True)``
then ``get_gold_action_sequence()``); TextWorld games (generated offline with
``tw-make``) carry a walkthrough.  Each trajectory is one JSON file under

    <root>/<env>/<split>/<task family>/<variation>.json

written atomically, so an interrupted collection resumes where it stopped: a
file that exists is not played again.  Environments run in parallel worker
processes, each with its own bounded JVM reused across its variations.

*Which variations.*  A split's first variations share objects and rooms, so N
per family are taken **spread over the split** in van der Corput order
(``spread_order``): every prefix of that order is spread evenly, so a smaller
recipe's variations are a subset of a larger one's and share its cache.  The
split's variation lists are written beside the cache (``variations.json``) so
that loading N per family picks the same spread without a JVM.  ``per_task``
is one count for every family or a count per family (``recipe_counts``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from glider.trainer.data.schema import Step, Trajectory

log = logging.getLogger(__name__)


def trajectory_path(root: Path, env: str, split: str, task: str, variation: int) -> Path:
    return Path(root) / env / split / task / f"{variation}.json"


def _write(path: Path, traj: Trajectory) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(traj.model_dump_json(), encoding="utf-8")
    os.replace(tmp, path)


# --- ScienceWorld ------------------------------------------------------------------
_ENV = None


#: a perturbation draws a kind of mistake first, then an action of that kind (valid actions are
#: mostly nonsense like "connect agent to air": a uniform draw would almost never be a plausible detour)
PERTURB_KINDS = (("go to", "open door"), ("look around", "look at"), ("pick up", "move"), ("focus on",))


def perturbed_action(valid: list[str], rng) -> str | None:
    kinds = [[a for a in valid if a.startswith(prefixes)] for prefixes in PERTURB_KINDS]
    kinds = [k for k in kinds if k]
    return rng.choice(rng.choice(kinds)) if kinds else None


def _scienceworld_gold(job: tuple) -> tuple[str, int, int]:
    """Play one gold path (in a worker process), perturbed when ε > 0; returns (task, variation, steps)."""
    global _ENV
    import random

    from glider.clients.envs.scienceworld import ObservationFormatter, open_env

    root, task, split, variation, max_steps, epsilon = job
    rng = random.Random(f"{task}/{split}/{variation}/{epsilon}")
    if _ENV is None:
        _ENV = open_env(step_limit=max_steps + 10)
    env = _ENV
    env.load(task, variation, "", generateGoldPath=True)
    obs, info = env.reset()
    observe = ObservationFormatter()
    gold = list(env.get_gold_action_sequence())[:max_steps]
    source = f"perturbed-{epsilon:g}" if epsilon else "gold"
    traj = Trajectory(id=f"scienceworld/{task}/{split}/{variation}" + (f"/{source}" if epsilon else ""),
                      env="scienceworld", task_name=task, split=split, variation=variation, source=source,
                      task=env.get_task_description(), initial_score=float(info.get("score", 0)) / 100)
    observation = observe(obs, info)
    score = traj.initial_score
    actions = list(gold)
    while actions and len(traj.steps) < max_steps:
        action = actions[0]
        if epsilon and rng.random() < epsilon:
            action = perturbed_action(list(env.get_valid_action_object_combinations()), rng) or action
        if action == actions[0]:
            actions.pop(0)
        obs, _, done, info = env.step(action)
        new_score = float(info.get("score", 0)) / 100
        done = bool(done) or new_score < 0
        traj.steps.append(Step(observation=observation, action=action, reward=round(new_score - score, 6),
                               score=new_score, done=done))
        score = new_score
        observation = observe(obs, info)
        if done:
            break
    traj.final_observation = observation
    _write(trajectory_path(root, "scienceworld", split, task, variation), traj)
    return task, variation, len(traj.steps)


PerTask = int | Mapping[str, int]


def spread_order(n: int) -> list[int]:
    """Positions 0..n-1 in van der Corput order: each prefix is spread evenly over the range
    (8 -> 0, 4, 2, 6, 1, 5, 3, 7)."""
    bits = max(1, (n - 1).bit_length())
    order, seen = [], set()
    for i in range(1 << bits):
        position = int(int(f"{i:0{bits}b}"[::-1], 2) * n >> bits)  # bit-reversed i, scaled to n
        if position not in seen:
            seen.add(position)
            order.append(position)
    return order


def spread(variations: list[int], k: int) -> list[int]:
    """``k`` of a split's variations, spread over it (the first ``k`` of ``spread_order``)."""
    return [variations[p] for p in spread_order(len(variations))[:k]] if variations else []


def _count(per_task: PerTask, task: str) -> int:
    return per_task if isinstance(per_task, int) else per_task.get(task, 0)


def recipe_counts(name: str) -> dict[str, int]:
    """Trajectories per family of a data recipe: ``glider`` is the paper's, GLIDER's ``task_nums.csv`` train
    column (1,284 over 23 families)."""
    if name != "glider":
        raise ValueError(f"unknown data recipe {name!r} (glider)")
    from glider.clients.protocols import glider_counts

    return {task: n["train"] for task, n in glider_counts().items() if n["train"]}


def variations_path(root: Path, env: str, split: str) -> Path:
    return Path(root) / env / split / "variations.json"


def scienceworld_jobs(root: Path, split: str, tasks: list[str] | None, per_task: PerTask, max_steps: int,
                      offset: int = 0, perturb: float = 0.0) -> tuple[list[tuple], int]:
    """The (task, variation) pairs still to collect, and how many are cached already; records the split's
    variation lists for ``load_collected``."""
    from glider.clients.envs.scienceworld import SPLITS, open_env

    env = open_env()
    jobs, cached = [], 0
    lists: dict[str, list[int]] = {}
    try:
        names = tasks or (list(env.get_task_names()) if isinstance(per_task, int) else list(per_task))
        for task in names:
            env.load(task, 0)
            lists[task] = list(getattr(env, SPLITS[split])())
            for var in spread(lists[task][offset:], _count(per_task, task)):
                if trajectory_path(root, "scienceworld", split, task, var).is_file():
                    cached += 1
                else:
                    jobs.append((Path(root), task, split, var, max_steps, perturb))
    finally:
        env.close()
    path = variations_path(root, "scienceworld", split)
    known = json.loads(path.read_text()) if path.is_file() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**known, **lists}, sort_keys=True))
    return jobs, cached


# --- TextWorld -----------------------------------------------------------------------
def _textworld_walkthrough(job: tuple) -> tuple[str, int, int]:
    from glider.clients.envs.textworld import TextWorld, generate_game
    from glider.clients.play import TEXTWORLD_SPLIT_SEED

    root, family, split, position, max_steps, games_dir = job
    seed = TEXTWORLD_SPLIT_SEED[split] + position
    world = TextWorld(generate_game(games_dir, seed, family=family))
    try:
        first = world.reset()
        walkthrough = list(first.info.get("walkthrough") or [])[:max_steps]
        traj = Trajectory(id=f"textworld/{family}/{split}/{position}", env="textworld", task_name=family,
                          split=split, variation=position, source="gold", task=world.task,
                          initial_score=first.score)
        observation = first.observation
        for action in walkthrough:
            result = world.step(action)
            traj.steps.append(Step(observation=observation, action=action, reward=result.reward,
                                   score=result.score, done=result.done))
            observation = result.observation
            if result.done:
                break
        traj.final_observation = observation
    finally:
        world.close()
    _write(trajectory_path(root, "textworld", split, family, position), traj)
    return family, position, len(traj.steps)


def textworld_jobs(root: Path, split: str, families: list[str] | None, per_task: int, max_steps: int,
                   games_dir: Path, offset: int = 0) -> tuple[list[tuple], int]:
    jobs, cached = [], 0
    for family in families or ["tw-cooking"]:
        for position in range(offset, offset + per_task):
            if trajectory_path(root, "textworld", split, family, position).is_file():
                cached += 1
            else:
                jobs.append((Path(root), family, split, position, max_steps, Path(games_dir)))
    return jobs, cached


# --- driver --------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectCounts:
    """What one ``collect`` call did."""

    played: int  # trajectories played now
    cached: int  # trajectories already in the cache (resumed, not replayed)
    steps: int  # environment steps played now


def collect(root: Path, *, env: str = "scienceworld", split: str = "train", tasks: list[str] | None = None,
            per_task: PerTask = 5, workers: int = 2, max_steps: int = 100, offset: int = 0,
            games_dir: Path = Path(".glider/games"), perturb: float = 0.0, progress: bool = True) -> CollectCounts:
    """Collect expert trajectories (resuming); returns what was played and what was cached.

    ``perturb`` = ε > 0 collects perturbed replays instead (ScienceWorld; keep them under their own ``root``).
    """
    from tqdm import tqdm

    if perturb and env != "scienceworld":
        raise ValueError("perturbed replays are collected from ScienceWorld")
    if env == "scienceworld":
        jobs, cached = scienceworld_jobs(root, split, tasks, per_task, max_steps, offset, perturb)
        work = _scienceworld_gold
    elif env == "textworld":
        if not isinstance(per_task, int):
            raise ValueError("TextWorld collects one count of games per family")
        jobs, cached = textworld_jobs(root, split, tasks, per_task, max_steps, games_dir, offset)
        work = _textworld_walkthrough
    else:
        raise ValueError(f"expert data comes from scienceworld or textworld, not {env!r}")
    steps = 0
    if jobs:
        with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(work, job) for job in jobs]
            with tqdm(total=len(jobs), desc=f"{env} {split}", unit="traj", disable=not progress) as bar:
                for future in as_completed(futures):
                    _, _, n = future.result()
                    steps += n
                    bar.update(1)
                    bar.set_postfix(steps=steps)
    return CollectCounts(played=len(jobs), cached=cached, steps=steps)


def load_collected(root: Path, env: str = "scienceworld", split: str = "train",
                   tasks: Iterable[str] | None = None, per_task: PerTask | None = None) -> list[Trajectory]:
    """Collected trajectories in a stable order (task, variation).

    ``per_task`` keeps N per family (one count, or one per family): the same spread over the split that
    ``collect`` took, where the split's variation lists were recorded; else the first N by variation.
    """
    base = Path(root) / env / split
    wanted = set(tasks) if tasks else None
    out: list[Trajectory] = []
    if not base.is_dir():
        return out
    lists_file = variations_path(root, env, split)
    lists = json.loads(lists_file.read_text()) if lists_file.is_file() else {}
    for task_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if wanted is not None and task_dir.name not in wanted:
            continue
        files = sorted(task_dir.glob("*.json"), key=lambda p: int(p.stem))
        if per_task is not None:
            k = _count(per_task, task_dir.name)
            if task_dir.name in lists:
                keep = set(spread(lists[task_dir.name], k))
                files = [f for f in files if int(f.stem) in keep]
            else:
                files = files[:k]
        for f in files:
            out.append(Trajectory.model_validate_json(f.read_text(encoding="utf-8")))
    return out
