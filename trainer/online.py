"""O2O's online loop around the learner (``glider.trainer.o2o``): play episodes through the
server in a process pool, read what the server recorded, update, publish, and wait until the server
has hot-swapped to what was published before the next iteration plays."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from glider.trainer.data.schema import Trajectory
from glider.trainer.o2o import OnlineLearner, UpdateReport

log = logging.getLogger(__name__)


@dataclass
class IterationPoint:
    """One point of the learning curve: what an iteration played, learnt and published."""

    iteration: int
    episodes: int  # online episodes played so far (cumulative)
    score: float  # mean final score (clipped at 0) of this iteration's episodes
    best: float  # mean best score reached in them
    tasks: dict[str, float]  # task family -> score of its episode
    versions: dict[str, str]  # adapter -> version published
    play_s: float
    train_s: float
    swap_s: float  # until the server served what was published
    update: UpdateReport = field(default_factory=UpdateReport)  # what the learner did (OnlineLearner.update)
    # each online episode's score (0..1) by its place in the schedule, "iteration/family/position": every
    # method plays the same schedule (and seeds), so two curves pair episode by episode
    episode_scores: dict[str, float] = field(default_factory=dict)
    gate: float | None = None  # the publish gate's score of this update (None: no gate)
    rolled_back: bool = False  # the gate rejected it: the server went back to ``served``
    served: dict[str, str] = field(default_factory=dict)  # what the server serves after the iteration
    # the greedy evaluation (O2OConfig.eval_episodes) of what the server serves after the iteration, by
    # "family/position"; the first point also holds the offline policy's, before any update
    eval_scores: dict[str, float] = field(default_factory=dict)
    eval_before: dict[str, float] = field(default_factory=dict)

    @property
    def eval_score(self) -> float | None:
        return sum(self.eval_scores.values()) / len(self.eval_scores) if self.eval_scores else None

    def to_json(self) -> dict:
        return {**asdict(self), "update": self.update.to_dict()}

    @classmethod
    def from_json(cls, data: dict) -> IterationPoint:
        """From ``curve.json``; curves written before this class held the learner's report at the top level."""
        names = {f.name for f in fields(cls)}
        point = {k: v for k, v in data.items() if k in names}
        point["update"] = UpdateReport.from_dict(point.get("update", {k: v for k, v in data.items() if k not in names}))
        return cls(**point)


def wait_for_versions(server: str, versions: dict[str, str], timeout: float, profile: str | None = None) -> float:
    """Block until the server's /readyz reports ``versions`` (of agent ``profile``'s adapters; None: the
    default's); returns the seconds it took."""
    from glider.clients.sdk import GliderClient

    def serving(health) -> dict:
        if health is None:
            return {}
        return (health.profiles.get(profile) or {}).get("adapters") or {} if profile else health.adapters

    t0 = time.monotonic()
    with GliderClient(server) as client:
        while True:
            health = client.ready()
            if all(serving(health).get(n) == v for n, v in versions.items()):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"server {server} did not swap to {versions} within {timeout:.0f}s "
                                   f"(it serves {serving(health) or 'nothing'})")
            time.sleep(0.2)


def read_episodes(record_dir: Path, episode_ids: Sequence[str], timeout: float = 30.0) -> list[Trajectory]:
    """The recorded trajectories of ``episode_ids``, once the server's writer has flushed their closing
    records (each episode ends with a ``done`` record)."""
    from glider.trainer.data.logs import log_files, read_records, trajectories_from_records

    wanted = set(episode_ids)
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in read_records(log_files(record_dir, include_open=True)) if r["episode_id"] in wanted]
        closed = {r["episode_id"] for r in records if r.get("done")}
        if closed >= wanted or time.monotonic() > deadline:
            if closed < wanted:
                log.warning("episodes %s not closed in the logs after %.0fs; using what is there",
                            sorted(wanted - closed), timeout)
            return trajectories_from_records(records)
        time.sleep(0.2)


def greedy_scores(pool, cfg, server: str, games_dir: Path, schedule: Sequence[tuple[str, int]], split: str
                  ) -> dict[str, float]:
    """Fixed episodes played greedy through the server as it serves now: "family/position" -> final
    score clipped at 0."""
    from glider.clients.play import PlayJob, play_job

    jobs = [PlayJob("scienceworld", task, split, pos, cfg.transport, server, cfg.max_steps, Path(games_dir),
                    wrap=True, profile=cfg.profile) for task, pos in schedule]
    reports = pool.map(play_job, jobs)
    return {f"{task}/{pos}": max(0.0, r.score) for (task, pos), r in zip(schedule, reports, strict=True)}


def gate_score(pool, cfg, server: str, games_dir: Path) -> float:
    """The publish gate's evaluation: its fixed episodes, greedy, through the server as it serves now."""
    scores = greedy_scores(pool, cfg, server, games_dir, cfg.gate_schedule(), cfg.split)
    return sum(scores.values()) / len(scores)


def announce(server: str, versions: dict[str, str], profile: str | None) -> None:
    """Tell the server that ``versions`` are published, so that it (and through Redis every replica) swaps
    now instead of on its next poll. Needs the admin token (``GLIDER_ADMIN_TOKEN``, as the trainer sidecar
    has it); without it, or if the call fails, the polls find the new versions a little later."""
    import httpx
    from glider.clients.sdk import GliderAPIError, GliderClient

    token = os.environ.get("GLIDER_ADMIN_TOKEN")
    if not token or not versions:
        return
    try:
        with GliderClient(server, timeout=30) as client:
            reply = client.adapters_published(list(versions), token=token, profile=profile)
        log.debug("server serves %s; %d other replicas told", reply.get("serving"), reply.get("replicas_notified", 0))
    except (GliderAPIError, httpx.HTTPError) as exc:
        log.warning("could not tell %s about the published adapters (%s); its poll will find them", server, exc)


def roll_back(learner: OnlineLearner, server: str, versions: dict[str, str], timeout: float) -> float:
    """Make ``versions`` current again, wait until the server serves them, and put the learner back on
    them; returns the seconds the server took."""
    from glider.server.adapters.registry import AdapterRegistry

    registry = AdapterRegistry(learner.registry)
    for name, version in versions.items():
        registry.set_current(name, version)
    learner.restore(versions)
    announce(server, versions, learner.cfg.profile)
    return wait_for_versions(server, versions, timeout, learner.cfg.profile)


def run_o2o(server: str, record_dir: Path, learner: OnlineLearner, *, games_dir: Path = Path(".glider/games"),
            on_iteration=None, before_publish=None) -> list[IterationPoint]:
    """Play → record → update → publish → swap (→ gate), ``cfg.iterations`` times (0: until stopped);
    returns the learning curve.  ``before_publish()`` may raise to stop before anything is published (a
    trainer that lost its leader lock).  With a gate (``cfg.gate_episodes``), an update whose gate score
    falls more than ``cfg.gate_margin`` below the last accepted one is rolled back at once."""
    import itertools
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from glider.clients.play import PlayJob, episode_sampling, play_job

    cfg = learner.cfg
    curve: list[IterationPoint] = []
    played = 0
    learner.out_dir.mkdir(parents=True, exist_ok=True)
    iterations = itertools.count() if cfg.iterations == 0 else range(cfg.iterations)
    with ProcessPoolExecutor(max_workers=max(1, cfg.parallel), mp_context=get_context("spawn")) as pool:
        accepted = dict(learner.start_versions)
        accepted_gate = gate_score(pool, cfg, server, games_dir) if cfg.gate_episodes else None
        evaluate = (lambda: greedy_scores(pool, cfg, server, games_dir, cfg.eval_schedule(), cfg.eval_split)) \
            if cfg.eval_episodes else dict
        before = evaluate()
        for it in iterations:
            t0 = time.monotonic()
            # variations wrap around: a long (or endless) run replays the split from its start
            schedule = cfg.schedule(it)
            jobs = [PlayJob("scienceworld", task, cfg.split, pos, cfg.transport, server, cfg.max_steps,
                            Path(games_dir), wrap=True, profile=cfg.profile,
                            sampling=episode_sampling(cfg.temperature, cfg.seed, f"o2o/{it}/{task}/{pos}"))
                    for task, pos in schedule]
            reports = list(pool.map(play_job, jobs))  # in the schedule's order
            played += len(reports)
            play_s = time.monotonic() - t0
            trajs = read_episodes(record_dir, [r.episode_id for r in reports])
            t1 = time.monotonic()
            stats = learner.update(trajs)
            if before_publish is not None:
                before_publish()
            versions = learner.publish(it + 1)
            train_s = time.monotonic() - t1
            announce(server, versions, cfg.profile)
            swap_s = wait_for_versions(server, versions, cfg.swap_timeout_s, cfg.profile)
            gate, rolled_back = None, False
            if accepted_gate is not None:
                gate = gate_score(pool, cfg, server, games_dir)
                if gate < accepted_gate - cfg.gate_margin:
                    rolled_back = True
                    log.warning("o2o %s iteration %d: gate %.3f below the accepted %.3f by more than %.3f; "
                                "rolling back to %s", cfg.method, it, gate, accepted_gate, cfg.gate_margin, accepted)
                    swap_s += roll_back(learner, server, accepted, cfg.swap_timeout_s)
                else:
                    accepted, accepted_gate = dict(versions), gate
            elif versions:
                accepted = dict(versions)
            point = IterationPoint(iteration=it, episodes=played,
                                   score=sum(max(0.0, r.score) for r in reports) / len(reports),
                                   best=sum(max(0.0, r.max_score) for r in reports) / len(reports),
                                   tasks={r.task_name: max(0.0, r.score) for r in reports}, versions=versions,
                                   episode_scores={f"{it}/{task}/{pos}": max(0.0, r.score)
                                                   for (task, pos), r in zip(schedule, reports, strict=True)},
                                   play_s=play_s, train_s=train_s, swap_s=swap_s, update=stats, gate=gate,
                                   rolled_back=rolled_back, served=dict(accepted), eval_scores=evaluate(),
                                   eval_before=before if it == 0 else {})
            curve.append(point)
            (learner.out_dir / "curve.json").write_text(json.dumps([p.to_json() for p in curve], indent=2, default=str))
            log.info("o2o %s iteration %d: score %.3f over %d episodes; published %s (swap %.1fs)", cfg.method, it,
                     point.score, len(reports), versions, swap_s)
            if on_iteration is not None:
                on_iteration(point)
    return curve


Curve = Sequence[IterationPoint]


def curve_episodes(curve: Curve | Mapping[int, Curve], *, greedy: bool = False) -> dict[tuple[str, str], float]:
    """Every online episode's score ×100 (``greedy``: every greedy evaluation episode's, after each
    update), keyed (family, schedule place) as ``glider.clients.stats`` pairs.  Several seeds' curves
    (seed -> curve) pool their episodes, each place tagged with its seed: two methods pair on the same
    place of the same seed."""
    if isinstance(curve, Mapping):
        return {(family, f"{place}/seed{seed}"): score for seed, c in curve.items()
                for (family, place), score in curve_episodes(c, greedy=greedy).items()}
    out = {}
    for pt in curve:
        scores = {f"{pt.iteration}/{k}": v for k, v in pt.eval_scores.items()} if greedy else pt.episode_scores
        for key, score in scores.items():  # "iteration/family/position"
            out[(key.split("/")[1], key)] = 100 * score
    return out


def area_with_ci(curve: Curve | Mapping[int, Curve], *, greedy: bool = False):
    """The area under the curve (mean over its episodes, ×100) with its bootstrap CI, episodes
    resampled within families (``clients.stats.bootstrap``, micro mean).  Over several seeds the
    episodes of one run are not independent (one learner made them): the CI is a lower bound on the
    spread between runs."""
    from glider.clients.stats import bootstrap

    by_family: dict[str, list[float]] = {}
    for (family, _), score in curve_episodes(curve, greedy=greedy).items():
        by_family.setdefault(family, []).append(score)
    return bootstrap(by_family, "micro")


def paired_area(a: Curve | Mapping[int, Curve], b: Curve | Mapping[int, Curve], *, greedy: bool = False):
    """AUC(B) − AUC(A) over the schedule places both played, with its paired bootstrap CI."""
    from glider.clients.stats import paired

    return paired(curve_episodes(a, greedy=greedy), curve_episodes(b, greedy=greedy), "micro")


def seed_areas(runs: Mapping[int, Curve], *, greedy: bool = False) -> dict[int, float]:
    """Each seed's AUC (the mean of its episodes ×100): runs, not episodes, are what a rerun redraws."""
    return {seed: sum(scores) / len(scores) for seed, c in runs.items()
            if (scores := list(curve_episodes(c, greedy=greedy).values()))}


def seed_blocked_area(a: Mapping[int, Curve], b: Mapping[int, Curve], *, greedy: bool = False):
    """AUC(B) − AUC(A) with seeds as blocks: each seed's two AUCs over the places both methods played,
    and a Student-t interval over the seeds' differences (``clients.stats.blocked_difference``)."""
    from glider.clients.stats import blocked_difference

    per_a, per_b = {}, {}
    for seed in sorted(set(a) & set(b)):
        ea, eb = curve_episodes(a[seed], greedy=greedy), curve_episodes(b[seed], greedy=greedy)
        if common := sorted(set(ea) & set(eb)):
            per_a[seed] = sum(ea[k] for k in common) / len(common)
            per_b[seed] = sum(eb[k] for k in common) / len(common)
    return blocked_difference(per_a, per_b)


def area_under_curve(curve: Sequence[IterationPoint]) -> float:
    """Mean score over the online episodes played (the curve's area per episode), ×100."""
    total = sum(p.score * (p.episodes - (curve[i - 1].episodes if i else 0)) for i, p in enumerate(curve))
    return 100 * total / max(1, curve[-1].episodes) if curve else float("nan")
