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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
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


def scienceworld_jobs(root: Path, split: str, tasks: list[str] | None, per_task: int, max_steps: int,
                      offset: int = 0, perturb: float = 0.0) -> tuple[list[tuple], int]:
    """The (task, variation) pairs still to collect, and how many are cached already."""
    from glider.clients.envs.scienceworld import SPLITS, open_env

    env = open_env()
    jobs, cached = [], 0
    try:
        for task in tasks or list(env.get_task_names()):
            env.load(task, 0)
            variations = list(getattr(env, SPLITS[split])())[offset: offset + per_task]
            for var in variations:
                if trajectory_path(root, "scienceworld", split, task, var).is_file():
                    cached += 1
                else:
                    jobs.append((Path(root), task, split, var, max_steps, perturb))
    finally:
        env.close()
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
def collect(root: Path, *, env: str = "scienceworld", split: str = "train", tasks: list[str] | None = None,
            per_task: int = 5, workers: int = 2, max_steps: int = 100, offset: int = 0,
            games_dir: Path = Path(".glider/games"), perturb: float = 0.0, progress: bool = True) -> dict:
    """Collect expert trajectories (resuming), return counts {"played", "cached", "steps"}.

    ``perturb`` = ε > 0 collects perturbed replays instead (ScienceWorld; keep them under their own ``root``).
    """
    from tqdm import tqdm

    if perturb and env != "scienceworld":
        raise ValueError("perturbed replays are collected from ScienceWorld")
    if env == "scienceworld":
        jobs, cached = scienceworld_jobs(root, split, tasks, per_task, max_steps, offset, perturb)
        work = _scienceworld_gold
    elif env == "textworld":
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
    return {"played": len(jobs), "cached": cached, "steps": steps}


def load_collected(root: Path, env: str = "scienceworld", split: str = "train",
                   tasks: Iterable[str] | None = None, per_task: int | None = None) -> list[Trajectory]:
    """Collected trajectories in a stable order (task, variation); ``per_task`` keeps the first N."""
    base = Path(root) / env / split
    wanted = set(tasks) if tasks else None
    out: list[Trajectory] = []
    if not base.is_dir():
        return out
    for task_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if wanted is not None and task_dir.name not in wanted:
            continue
        files = sorted(task_dir.glob("*.json"), key=lambda p: int(p.stem))
        for f in files[:per_task] if per_task else files:
            out.append(Trajectory.model_validate_json(f.read_text(encoding="utf-8")))
    return out
