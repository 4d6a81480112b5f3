"""Play environment episodes through the agent's API and report what happened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glider.clients.envs.base import Environment
from glider.clients.sdk import GliderClient
from glider.v1.rest import Sampling


@dataclass
class StepRecord:
    step: int
    subgoal: str | None
    new_subgoal: bool
    action: str
    reward: float
    score: float
    observation: str
    subgoal_done: bool = False  # the executor marked its subgoal done with this action
    fallback: bool = False  # the server answered its fallback (no usable generation)
    grounded: bool = False  # the action is an admissible command the model's scores chose over its own
    generated_action: str | None = None  # the model's own action, when admissible commands were sent


@dataclass
class EpisodeReport:
    episode_id: str
    task: str
    task_name: str = ""  # the environment's name for the task family, when it has one
    steps: list[StepRecord] = field(default_factory=list)
    score: float = 0.0  # final score, 0..1
    max_score: float = 0.0  # best score reached, 0..1
    done: bool = False
    sampling: dict | None = None  # the episode's own sampling settings, as sent (None: the server's default)
    grounded: bool = False  # played with the environment's admissible commands sent at every step

    @property
    def subgoals(self) -> int:
        return sum(1 for s in self.steps if s.new_subgoal)


def episode_sampling(temperature: float | None, seed: int, key: str, top_p: float | None = None) -> Sampling | None:
    """An episode's own sampling settings: ``temperature`` (None: the server's default, no settings sent)
    with a seed drawn from ``seed`` and the episode's ``key``, so each episode samples differently and
    any of them replays exactly from the seed its report records."""
    import hashlib

    if temperature is None:
        return None
    episode_seed = int(hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()[:13], 16)  # < 2^52: a valid seed
    return Sampling(temperature=temperature, top_p=top_p, seed=episode_seed)


def play_episode(client: GliderClient, env: Environment, max_steps: int = 50,
                 on_step: Callable[[StepRecord], None] | None = None,
                 sampling: Sampling | None = None, grounded: bool = False,
                 profile: str | None = None) -> EpisodeReport:
    """One episode through ``client``; ``sampling`` gives it its own sampling settings (sent when it starts);
    ``grounded`` sends the environment's admissible commands with every step (the answer is one of them);
    ``profile`` is the server's agent profile that plays it (None: the default)."""
    first = env.reset()
    reply = client.act(observation=first.observation, task=env.task, score=first.score, sampling=sampling,
                       valid_actions=first.valid_actions if grounded else None, profile=profile)
    report = EpisodeReport(episode_id=reply.episode_id, task=env.task, score=first.score,
                           max_score=first.score, task_name=getattr(env, "task_name", ""),
                           sampling=sampling.model_dump(exclude_none=True) if sampling is not None else None,
                           grounded=grounded)
    for _ in range(max_steps):
        assert reply.action is not None
        result = env.step(reply.action)
        record = StepRecord(step=reply.step, subgoal=reply.subgoal, new_subgoal=reply.new_subgoal,
                            action=reply.action, reward=result.reward, score=result.score,
                            observation=result.observation, subgoal_done=reply.subgoal_done,
                            fallback=reply.fallback, grounded=reply.grounded,
                            generated_action=reply.generated_action)
        report.steps.append(record)
        report.score = result.score
        report.max_score = max(report.max_score, result.score)
        if on_step is not None:
            on_step(record)
        last = len(report.steps) >= max_steps
        reply = client.act(observation=result.observation, episode_id=reply.episode_id,
                           reward=result.reward, done=result.done or last, score=result.score,
                           valid_actions=result.valid_actions if grounded and not (result.done or last) else None)
        if result.done or last:
            report.done = result.done
            break
    return report


# --- many episodes, in parallel environment processes -------------------------------------
_ENV = None  # one environment (a JVM for ScienceWorld) per worker process, reused across episodes


def parse_variations(spec: str) -> tuple[str, list[int]]:
    """``dev:0-9`` -> ("dev", [0..9]); ``test:0,3,5``; positions within the split's variation list."""
    split, _, ranges = spec.partition(":")
    if split not in ("train", "dev", "test", "seen", "unseen") or not ranges:
        raise ValueError(f"variations must look like dev:0-9 or test:0,2 (got {spec!r})")
    positions: list[int] = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        positions.extend(range(int(lo), int(hi or lo) + 1))
    return split, positions


def make_client(transport: str, server: str, timeout: float | None = None):
    from glider.clients.sdk import DEFAULT_TIMEOUT_S, GliderClient, GliderGrpcClient

    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout

    if transport == "grpc":
        return GliderGrpcClient(server, timeout=timeout)
    if transport == "rest":
        return GliderClient(server, timeout=timeout)
    raise ValueError(f"unknown transport {transport!r} (rest | grpc)")


#: TextWorld games of a split are the seeds from this offset on, so splits never share a game
TEXTWORLD_SPLIT_SEED = {"train": 0, "dev": 100_000, "seen": 100_000, "test": 200_000, "unseen": 200_000}


def open_environment(env: str, task: str, split: str, position: int, max_steps: int, games_dir: Path,
                     wrap: bool = False, grounded: bool = False):
    """The environment for one (task, split position), reusing this process's JVM for ScienceWorld.

    ``wrap``: a ScienceWorld position past the split's variations starts over from the first
    (an online learner that plays without end); otherwise it is an error."""
    global _ENV
    if env == "scienceworld":
        from glider.clients.envs.scienceworld import ScienceWorld, open_env

        if _ENV is None:
            _ENV = open_env(step_limit=max_steps + 10)
        world = ScienceWorld(task, 0, env=_ENV, grounded=grounded)
        variations = world.variations(split)
        if wrap:
            position %= len(variations)
        if position >= len(variations):
            raise ValueError(f"{task} has {len(variations)} {split} variations, not {position + 1}")
        world.variation = variations[position]
        return world
    if env == "textworld":
        from glider.clients.envs.textworld import TextWorld, generate_game

        return TextWorld(generate_game(games_dir, TEXTWORLD_SPLIT_SEED[split] + position, family=task))
    if env == "alfworld":
        from glider.clients.envs.alfworld import ALFWorld, list_games

        return ALFWorld(list_games(split)[position])
    raise ValueError(f"unknown environment {env!r} (scienceworld | textworld | alfworld)")


@dataclass(frozen=True)
class PlayJob:
    """One episode for a worker process (plain fields, so it pickles across spawn)."""

    env: str  # scienceworld | textworld | alfworld
    task: str
    split: str
    position: int  # variation position in the split (TextWorld: seed offset; ALFWorld: game index)
    transport: str  # rest | grpc
    server: str
    max_steps: int
    games_dir: Path
    wrap: bool = False  # positions past the split's end wrap around (a long online run)
    sampling: Sampling | None = None  # the episode's own sampling settings (``episode_sampling``)
    grounded: bool = False  # send the environment's admissible commands with every step
    profile: str | None = None  # the server's agent profile that plays it (None: the default)


def play_job(job: PlayJob) -> EpisodeReport:
    """One episode in a worker process."""
    world = open_environment(job.env, job.task, job.split, job.position, job.max_steps, job.games_dir, wrap=job.wrap,
                             grounded=job.grounded)
    try:
        with make_client(job.transport, job.server) as client:
            report = play_episode(client, world, max_steps=job.max_steps, sampling=job.sampling, profile=job.profile,
                                  grounded=job.grounded)
    finally:
        if job.env != "scienceworld":  # the ScienceWorld JVM is kept for this worker's next episode
            world.close()
    report.task_name = job.task  # the family asked for: what the summary groups by
    return report


def play_many(tasks: list[str], split: str, positions: list[int], *, transport: str, server: str,
              parallel: int, max_steps: int, env: str = "scienceworld",
              games_dir: Path = Path(".glider/games"), grounded: bool = False, profile: str | None = None,
              on_done: Callable[[EpisodeReport], None] | None = None) -> list[EpisodeReport]:
    """Play every (task, position) through the server, ``parallel`` environment processes at once.

    ScienceWorld: a task family and variation positions in the split.  TextWorld: a
    ``tw-make`` family (e.g. ``tw-cooking``) and seeds, offset per split.  ALFWorld:
    positions in the split's game list (``ALFWORLD_DATA``).
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    jobs = [PlayJob(env, t, split, p, transport, server, max_steps, Path(games_dir), grounded=grounded,
                    profile=profile) for t in tasks for p in positions]
    reports = []
    with ProcessPoolExecutor(max_workers=max(1, parallel), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(play_job, job) for job in jobs]
        for future in as_completed(futures):
            report = future.result()
            reports.append(report)
            if on_done is not None:
                on_done(report)
    return reports
