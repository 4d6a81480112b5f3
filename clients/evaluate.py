"""The evaluation harness: play a protocol's plan through a server, score it as the paper does, with CIs.

What is played and how it is scored is a ``Plan`` (``glider.clients.protocols``):
*seen* = ScienceWorld's dev variations, *unseen* = its test variations, the
step cap, the simplification, final or best score, macro or micro mean.  Every
split's figure comes with its 95 % stratified-bootstrap interval
(``glider.clients.stats``), and ``compare_runs`` pairs two runs of the same plan
episode by episode.

Runs are **resumable**: each finished episode is appended to ``episodes.jsonl``
in the output directory at once, and a run restarted on the same directory
plays only the episodes it does not have (the directory's ``plan.json`` must be
the same plan, and its ``sampling.json`` the same sampling settings).  Evaluation
is greedy unless a temperature is asked for: a sampled run (data collection,
O2O's exploration) sends each episode its own temperature and seed, recorded
with the episode so it replays exactly.  Beside it, one readable transcript per episode under
``transcripts/<split>/<family>/<variation>.md``.

*Throughput.* Episodes run in ``parallel`` threads, each with its own
environment (a bounded ScienceWorld JVM, reused across that thread's
episodes).  A thread spends its time waiting on the JVM or the server, both
outside the GIL, so many episodes are in flight at once and the engine batches
their generations.  The engine's cost is per decoding step, not per sequence
(a small model on a CPU), so the more episodes share a step the closer the
evaluation runs to the environment's own speed; the default
(``default_parallel``) is as many as free memory holds JVMs for, up to
``MAX_DEFAULT_PARALLEL``.  ``policy="gold"`` replays each episode's gold path with no
model: the environment's own floor, which ``bench/eval_throughput.py`` sets
beside the served run.

Outputs under the output directory: ``episodes.jsonl`` / ``episodes.csv``,
``table.md`` / ``table.csv`` (score ×100 per family and split, overall with
CIs), ``summary.json``, ``scores.png``, ``transcripts/``; with several adapter
versions, ``curve.png`` / ``curve.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from glider.clients.play import EpisodeReport, StepRecord
from glider.clients.protocols import SPLITS, Plan, PlannedEpisode
from glider.clients.stats import aggregate, bootstrap, paired

log = logging.getLogger(__name__)

#: resident memory of one evaluation environment: a ScienceWorld JVM at ``-Xmx384m`` holds ~0.48 GiB
ENV_RESIDENT_GIB = 0.5
#: the default's ceiling, the most measured here (``bench/eval_throughput.py``, docs/benchmarks.md): 24 JVMs and
#: the engine fit a 24 GiB machine with room to spare
MAX_DEFAULT_PARALLEL = 24


def default_parallel(reserve_gib: float = 2.0) -> int:
    """Episodes in flight when none is asked for: one JVM each, as many as the memory available now holds
    (keeping ``reserve_gib`` free), between 2 and ``MAX_DEFAULT_PARALLEL``."""
    import psutil

    free_gib = psutil.virtual_memory().available / 2**30 - reserve_gib
    return max(2, min(MAX_DEFAULT_PARALLEL, int(free_gib / ENV_RESIDENT_GIB)))


@dataclass
class EvalConfig:
    plan: Plan
    server: str = "127.0.0.1:50051"
    transport: str = "grpc"
    parallel: int | None = None  # episodes in flight, one environment each; None: ``default_parallel()``
    policy: str = "server"  # server: the agent behind ``server`` | gold: replay the gold path (the floor)
    games_dir: Path = Path(".glider/games")
    # gold policy: play each episode (by key) to this many steps, "look around" after the gold path, so the
    # floor steps and loads the environment exactly as often as a served run did
    pad_steps: dict[str, int] | None = None
    # sampled episodes (None: the server's own settings, greedy by default, as the protocols are scored):
    # each episode sends its temperature and a seed drawn from ``seed`` and its key (``episode_sampling``)
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 0
    # send the environment's admissible commands with every step (the answer is one of them): a run of
    # its own, never mixed with the paper's free-generation protocol
    grounded: bool = False
    profile: str | None = None  # the server's agent profile that plays every episode (None: the default)
    # seconds one step's request may take: a 135 M backbone on 2 cores with 24 episodes in flight answers
    # a step in tens of seconds, and a step cut off by the client replays its whole episode
    timeout: float | None = None  # None: the SDK's DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.parallel is None:
            self.parallel = default_parallel()

    def sampling_settings(self) -> dict:
        """What a run directory records of how its episodes were played, so a resume cannot mix greedy and
        sampled episodes, or free and grounded ones."""
        return {"temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed if self.temperature is not None else None,
                **({"grounded": True} if self.grounded else {}),
                **({"profile": self.profile} if self.profile else {})}


@dataclass
class EpisodeResult:
    split: str  # seen | unseen
    task: str
    variation: int
    score: float  # final score, clipped at 0 (GLIDER's protocol), 0..1
    best: float  # best score reached, clipped at 0 (ETO's protocol), 0..1
    steps: int
    subgoals: int
    done: bool
    seconds: float = 0.0
    sampling: dict | None = None  # the episode's own temperature and seed, when it was sampled
    episode_id: str = ""  # the server's id of the episode: its records in the server's episode logs
    grounded_steps: int = 0  # steps whose action grounding chose among the admissible commands
    # steps the server answered with its fallback (no usable generation); None in runs recorded before it was kept
    fallback_steps: int | None = None

    @property
    def key(self) -> str:
        return PlannedEpisode(self.split, self.task, self.variation).key

    def value(self, scoring: str) -> float:
        """The episode's score ×100 under the protocol's rule."""
        return 100 * (self.score if scoring == "final" else self.best)

    @classmethod
    def from_report(cls, episode: PlannedEpisode, report: EpisodeReport, seconds: float = 0.0) -> EpisodeResult:
        return cls(split=episode.split, task=episode.task, variation=episode.variation,
                   score=max(0.0, report.score), best=max(0.0, report.max_score), steps=len(report.steps),
                   subgoals=report.subgoals, done=report.done, seconds=round(seconds, 3), sampling=report.sampling,
                   episode_id=report.episode_id, grounded_steps=sum(1 for s in report.steps if s.grounded),
                   fallback_steps=sum(1 for s in report.steps if s.fallback))


# --- playing ---------------------------------------------------------------------------
class _Environments:
    """One environment per worker thread, reused across the thread's episodes (a JVM each for ScienceWorld)."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.local = threading.local()
        self.opened: list = []
        self.lock = threading.Lock()
        self.step_limit = max(cfg.plan.max_steps.values()) + 10

    def get(self, episode: PlannedEpisode):
        plan = self.cfg.plan
        if plan.env == "scienceworld":
            from glider.clients.envs.scienceworld import ScienceWorld, open_env

            jvm = getattr(self.local, "jvm", None)
            if jvm is None:
                jvm = self.local.jvm = open_env(step_limit=self.step_limit)
                with self.lock:
                    self.opened.append(jvm)
            return ScienceWorld(episode.task, episode.variation, env=jvm, simplification=plan.simplification,
                                gold=self.cfg.policy == "gold", grounded=self.cfg.grounded)
        from glider.clients.play import open_environment

        return open_environment(plan.env, episode.task, SPLITS[episode.split], episode.variation,
                                plan.steps_for(episode.task), self.cfg.games_dir)

    def discard(self) -> None:
        """Drop this thread's JVM (after an error it may be dead); the next episode opens a new one."""
        jvm = getattr(self.local, "jvm", None)
        self.local.jvm = None
        if jvm is not None:
            try:
                jvm.close()
            except Exception:  # it is being thrown away because it failed
                pass

    def close(self) -> None:
        for jvm in self.opened:
            try:
                jvm.close()
            except Exception:  # a JVM that already died has nothing left to close
                pass


def play_gold(world, max_steps: int, pad_to: int | None = None) -> EpisodeReport:
    """Replay the loaded variation's gold path with no model (the environment's floor); with ``pad_to``,
    carry on with ``look around`` to that many steps whatever the environment says."""
    first = world.reset()
    report = EpisodeReport(episode_id="gold", task=world.task, score=first.score, max_score=first.score)
    actions = world.gold_actions()[:max_steps]
    total = len(actions) if pad_to is None else pad_to
    for i in range(total):
        action = actions[i] if i < len(actions) else "look around"
        result = world.step(action)
        report.steps.append(StepRecord(step=i, subgoal=None, new_subgoal=False, action=action,
                                       reward=result.reward, score=result.score, observation=result.observation))
        report.score, report.max_score = result.score, max(report.max_score, result.score)
        report.done = report.done or result.done
        if result.done and pad_to is None:
            break
    return report


def _play(cfg: EvalConfig, envs: _Environments, clients: threading.local,
          episode: PlannedEpisode) -> tuple[EpisodeResult, EpisodeReport]:
    from glider.clients.play import episode_sampling, make_client, play_episode
    from glider.clients.sdk import GliderAPIError

    started = time.monotonic()
    world = envs.get(episode)
    cap = cfg.plan.steps_for(episode.task)
    try:
        if cfg.policy == "gold":
            report = play_gold(world, cap, (cfg.pad_steps or {}).get(episode.key))
        else:
            client = getattr(clients, "client", None)
            if client is None:
                client = clients.client = make_client(cfg.transport, cfg.server, cfg.timeout)
            report = play_episode(client, world, max_steps=cap, grounded=cfg.grounded, profile=cfg.profile,
                                  sampling=episode_sampling(cfg.temperature, cfg.seed, episode.key, cfg.top_p))
    except GliderAPIError:
        raise
    except Exception:
        if cfg.plan.env == "scienceworld":
            envs.discard()  # the JVM may have died with the episode: the retry gets a fresh one
        raise
    finally:
        if cfg.plan.env != "scienceworld":  # a ScienceWorld JVM stays with its thread
            world.close()
    return EpisodeResult.from_report(episode, report, time.monotonic() - started), report


def run_episodes(cfg: EvalConfig, out: Path | None = None, on_done: Callable[[EpisodeResult], None] | None = None
                 ) -> list[EpisodeResult]:
    """Play the plan; with ``out``, resume what is there and write each episode (row + transcript) as it ends.

    Returns every result of the plan, resumed ones included, in the plan's order."""
    plan = cfg.plan
    done: dict[str, EpisodeResult] = {}
    log_file = None
    if out is not None:
        out = Path(out)
        done = _open_run(out, plan, cfg.sampling_settings())
        log_file = (out / "episodes.jsonl").open("a", encoding="utf-8")
    todo = [e for e in plan.episodes if e.key not in done]
    envs, clients = _Environments(cfg), threading.local()
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.parallel), thread_name_prefix="episode")
    try:
        futures = {pool.submit(_play, cfg, envs, clients, e): e for e in todo}
        retried: set[str] = set()
        pending = set(futures)
        while pending:
            future = next(as_completed(pending))
            pending.discard(future)
            episode = futures[future]
            try:
                result, report = future.result()
            except Exception as exc:
                if episode.key in retried:
                    raise
                retried.add(episode.key)  # an environment that failed once (a JVM crash) gets one more try
                log.warning("episode %s failed (%s: %s); playing it again", episode.key, type(exc).__name__, exc)
                retry = pool.submit(_play, cfg, envs, clients, episode)
                futures[retry] = episode
                pending.add(retry)
                continue
            done[result.key] = result
            if log_file is not None:
                log_file.write(json.dumps(asdict(result)) + "\n")
                log_file.flush()
                write_transcript(out, episode, result, report, plan)
            if on_done is not None:
                on_done(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        envs.close()
        if log_file is not None:
            log_file.close()
    return [done[e.key] for e in plan.episodes if e.key in done]


def plan_digest(plan: Plan) -> str:
    return hashlib.sha256(plan.to_json().encode()).hexdigest()[:16]


def _open_run(out: Path, plan: Plan, sampling: dict | None = None) -> dict[str, EpisodeResult]:
    """The results already in ``out`` for this plan; refuses a directory that holds another plan's run, or
    a run played with other sampling settings."""
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / "plan.json"
    if plan_file.is_file():
        if plan_digest(Plan.from_json(plan_file.read_text())) != plan_digest(plan):
            raise ValueError(f"{out} holds a run of another plan; resume it with that plan or use a new --out")
    else:
        plan_file.write_text(plan.to_json())
    sampling = sampling or {}
    sampling_file = out / "sampling.json"
    if sampling_file.is_file():
        played = json.loads(sampling_file.read_text())
        if played != sampling:
            raise ValueError(f"{out} holds a run played with sampling {played}, not {sampling}; use a new --out")
    elif (out / "episodes.jsonl").is_file() and sampling.get("temperature") is not None:
        raise ValueError(f"{out} holds a run played with the server's own sampling; use a new --out")
    else:  # a new run, or one from before this file (played with the server's settings) resumed the same way
        sampling_file.write_text(json.dumps(sampling) + "\n")
    results = load_results(out)
    log = out / "episodes.jsonl"
    if log.is_file():  # rewrite it without a line a killed run cut off, so appended rows start on a line of their own
        tmp = log.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in results), encoding="utf-8")
        tmp.replace(log)
    return {r.key: r for r in results}


def load_results(out: Path) -> list[EpisodeResult]:
    """``episodes.jsonl`` of a run directory (a line cut off by a crash is skipped)."""
    path = Path(out) / "episodes.jsonl"
    results: dict[str, EpisodeResult] = {}
    if path.is_file():
        names = {f.name for f in fields(EpisodeResult)}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            result = EpisodeResult(**{k: v for k, v in row.items() if k in names})
            results[result.key] = result
    return list(results.values())


def load_run(out: Path) -> tuple[Plan, list[EpisodeResult]]:
    out = Path(out)
    if not (out / "plan.json").is_file():
        raise ValueError(f"{out} is not an evaluation run (no plan.json)")
    return Plan.from_json((out / "plan.json").read_text()), load_results(out)


def write_transcript(out: Path, episode: PlannedEpisode, result: EpisodeResult, report: EpisodeReport,
                     plan: Plan) -> Path:
    """One episode as a person reads it: each subgoal, then its actions with what they got."""
    path = Path(out) / "transcripts" / episode.split / episode.task / f"{episode.variation}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {episode.task}, variation {episode.variation} ({episode.split})", "",
             f"Task: {report.task}", "",
             f"Final score {100 * result.score:.0f}, best {100 * result.best:.0f}; {result.steps} steps, "
             f"{result.subgoals} subgoals; {'ended by the environment' if result.done else 'step cap'} "
             f"(protocol {plan.protocol}, cap {plan.steps_for(episode.task)}).", ""]
    for rec in report.steps:
        if rec.new_subgoal:
            lines += ["", f"## Subgoal: {rec.subgoal}", ""]
        flags = (" — subgoal done" if rec.subgoal_done else "") + (" — fallback" if rec.fallback else "") + (
            f" — grounded (the model said `{rec.generated_action}`)" if rec.grounded else "")
        lines.append(f"{rec.step + 1}. `{rec.action}` → score {100 * rec.score:.0f} ({100 * rec.reward:+.0f}){flags}")
        observation = rec.observation.replace("\n", " / ")
        lines.append(f"   > {observation[:400]}{' …' if len(observation) > 400 else ''}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- the table --------------------------------------------------------------------
def _by_family(results: Sequence[EpisodeResult], split: str, scoring: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r.split == split:
            out[r.task].append(r.value(scoring))
    return dict(out)


@dataclass
class SplitSummary:
    """One split of a run: the protocol's aggregate with its 95 % CI, and the other figures beside it."""
    mean: float
    low: float
    high: float
    se: float
    episodes: int  # played
    planned: int
    macro: float  # of the final score
    micro: float  # of the final score
    best_micro: float  # of the best score reached
    steps: float  # per episode
    subgoals: float  # per episode
    # share of steps that fell back (no usable generation), over the episodes that recorded it; None if none did
    fallback_share: float | None = None


@dataclass
class Summary:
    """A run's table (``summary.json``): per family and split the protocol's score ×100, per split its
    aggregate with its CI."""
    protocol: str
    plan: str  # the plan as a sentence
    scoring: str  # final | best
    aggregate: str  # macro | micro
    tasks: list[str]
    splits: list[str]
    per_task: dict[str, dict[str, float]]  # family -> split -> score
    overall: dict[str, SplitSummary]
    label: str = ""
    meta: dict = field(default_factory=dict)  # what the caller recorded with the run (server, adapters...)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        return cls(**{**data, "overall": {s: SplitSummary(**o) for s, o in data["overall"].items()}})

    @classmethod
    def load(cls, path: Path) -> Summary:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _fallback_share(results: Sequence[EpisodeResult]) -> float | None:
    recorded = [r for r in results if r.fallback_steps is not None]
    steps = sum(r.steps for r in recorded)
    return sum(r.fallback_steps for r in recorded) / steps if steps else None


def summarize(results: Sequence[EpisodeResult], plan: Plan) -> Summary:
    """Per family and split the protocol's score ×100; per split the protocol's aggregate with its 95 % CI,
    and the other figures beside it (macro and micro of the final score, micro of the best)."""
    tasks = sorted({r.task for r in results})
    splits = [s for s in plan.splits if any(r.split == s for r in results)]
    per_task: dict[str, dict[str, float]] = {t: {} for t in tasks}
    overall = {}
    for s in splits:
        by_family = _by_family(results, s, plan.scoring)
        for task, values in by_family.items():
            per_task[task][s] = sum(values) / len(values)
        estimate = bootstrap(by_family, plan.aggregate)
        final, best = _by_family(results, s, "final"), _by_family(results, s, "best")
        in_split = [r for r in results if r.split == s]
        overall[s] = SplitSummary(mean=estimate.mean, low=estimate.low, high=estimate.high, se=estimate.se,
                                  episodes=estimate.episodes, planned=sum(1 for e in plan.episodes if e.split == s),
                                  macro=aggregate(final, "macro"), micro=aggregate(final, "micro"),
                                  best_micro=aggregate(best, "micro"),
                                  steps=sum(r.steps for r in in_split) / len(in_split),
                                  subgoals=sum(r.subgoals for r in in_split) / len(in_split),
                                  fallback_share=_fallback_share(in_split))
    return Summary(protocol=plan.protocol, plan=plan.describe(), scoring=plan.scoring, aggregate=plan.aggregate,
                   tasks=tasks, splits=splits, per_task=per_task, overall=overall)


def table_markdown(summary: Summary, label: str = "") -> str:
    splits = summary.splits
    lines = [f"| task family | {' | '.join(splits)} |", "|---|" + "---:|" * len(splits)]
    for task in summary.tasks:
        cells = [f"{summary.per_task[task][s]:.2f}" if s in summary.per_task[task] else "–" for s in splits]
        lines.append(f"| {task} | {' | '.join(cells)} |")

    def row(name: str, fmt: Callable[[SplitSummary], str]) -> str:
        return f"| {name} | " + " | ".join(fmt(summary.overall[s]) for s in splits) + " |"

    lines += [row(f"**overall ({summary.aggregate}), 95 % CI**", lambda o: f"**{o.mean:.2f}** [{o.low:.2f}, {o.high:.2f}]"),
              row("final score, macro", lambda o: f"{o.macro:.2f}"),
              row("final score, micro", lambda o: f"{o.micro:.2f}"),
              row("best score reached, micro", lambda o: f"{o.best_micro:.2f}"),
              row("episodes (played / planned)", lambda o: f"{o.episodes} / {o.planned}"),
              row("steps per episode", lambda o: f"{o.steps:.1f}"),
              row("steps that fell back", lambda o: "–" if o.fallback_share is None else f"{100 * o.fallback_share:.1f} %")]
    head = f"**{label}** — " if label else ""
    rule = "final score clipped at 0" if summary.scoring == "final" else "best score reached"
    return (f"{head}{summary.plan}\n\nscore ×100 ({rule}; {summary.aggregate} mean; "
            "95 % stratified bootstrap CI)\n\n" + "\n".join(lines) + "\n")


def write_report(results: Sequence[EpisodeResult], out: Path, plan: Plan, *, label: str = "",
                 meta: dict | None = None) -> Summary:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, plan)
    summary.label, summary.meta = label, meta or {}
    with (out / "episodes.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(EpisodeResult)])
        writer.writeheader()
        for r in results:
            writer.writerow({**asdict(r), "sampling": json.dumps(r.sampling) if r.sampling else ""})
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", *summary.splits])
        for task in summary.tasks:
            writer.writerow([task, *(f"{summary.per_task[task].get(s, float('nan')):.2f}" for s in summary.splits)])
        for key in ("mean", "low", "high"):
            writer.writerow([f"overall_{key}", *(f"{getattr(summary.overall[s], key):.2f}" for s in summary.splits)])
    (out / "table.md").write_text(table_markdown(summary, label))
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    plot_scores(summary, out / "scores.png")
    return summary


# --- comparisons --------------------------------------------------------------------
@dataclass
class FamilyDifference:
    difference: float  # mean B − A over the family's paired episodes
    episodes: int


@dataclass
class SplitDifference:
    """B − A on one split, paired over the episodes both played."""
    a: float  # A's aggregate over the paired episodes
    b: float
    difference: float
    low: float  # 95 % CI of the difference
    high: float
    se: float
    mde: float  # the minimum difference detectable at 80 % power with these episodes
    episodes: int  # paired
    only_a: int  # episodes only A played (left out)
    only_b: int
    per_family: dict[str, FamilyDifference] = field(default_factory=dict)

    @property
    def significant(self) -> bool:
        """The CI excludes 0: a finding."""
        return self.low > 0 or self.high < 0

    @classmethod
    def from_dict(cls, data: dict) -> SplitDifference:
        families = {f: FamilyDifference(**d) for f, d in data.get("per_family", {}).items()}
        return cls(**{**data, "per_family": families})


@dataclass
class RunComparison:
    a: str  # the runs' directories
    b: str
    protocol: str
    splits: dict[str, SplitDifference]
    scale_a: float = 1.0  # B − scale_a · A: a ratio target ("B ≥ 1.15 × A") as a paired difference

    def to_dict(self) -> dict:
        return asdict(self)


def compare_runs(run_a: Path, run_b: Path, *, scale_a: float = 1.0) -> RunComparison:
    """B − A, paired over the episodes both runs played, per split: the difference with its 95 % CI,
    the minimum detectable difference at 80 % power, and the per-family differences.  With ``scale_a``
    the difference is B − scale_a · A (episode by episode), so "B is at least 1.15 × A" is the claim
    that this difference's CI lies above 0."""
    plan_a, results_a = load_run(run_a)
    plan_b, results_b = load_run(run_b)
    if (plan_a.scoring, plan_a.aggregate) != (plan_b.scoring, plan_b.aggregate):
        raise ValueError(f"{run_a} and {run_b} score differently ({plan_a.protocol} vs {plan_b.protocol})")
    out = RunComparison(a=str(run_a), b=str(run_b), protocol=plan_a.protocol, splits={}, scale_a=scale_a)
    for split in plan_a.splits:
        va, vb = ({(r.task, r.key): scale * r.value(plan_a.scoring) for r in results if r.split == split}
                  for results, scale in ((results_a, scale_a), (results_b, 1.0)))
        if not set(va) & set(vb):
            continue
        c = paired(va, vb, plan_a.aggregate)
        common = set(va) & set(vb)
        d = c.difference
        out.splits[split] = SplitDifference(
            a=aggregate(_group(va, common), plan_a.aggregate), b=aggregate(_group(vb, common), plan_a.aggregate),
            difference=d.mean, low=d.low, high=d.high, se=d.se, mde=c.mde, episodes=d.episodes,
            only_a=c.only_a, only_b=c.only_b,
            per_family={f: FamilyDifference(difference=diff, episodes=n) for f, (diff, n) in c.per_family.items()})
    return out


def _group(values: dict, keep: set) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for key in keep:
        out[key[0]].append(values[key])
    return dict(out)


def difference_cell(c: SplitDifference) -> str:
    """A paired difference with its CI; bold only when the CI excludes 0 (a finding)."""
    value = f"{c.difference:+.2f}"
    if c.significant:
        value = f"**{value}**"
    return f"{value} [{c.low:+.2f}, {c.high:+.2f}]"


def comparison_markdown(cmp: RunComparison, label_a: str = "A", label_b: str = "B") -> str:
    splits = list(cmp.splits)
    if cmp.scale_a != 1.0:  # a ratio target: A's column and the difference are of scale_a · A
        label_a = f"{cmp.scale_a:g} × {label_a}"
    lines = [f"paired comparison on protocol {cmp.protocol}: B = {label_b}, A = {label_a} "
             "(score ×100; 95 % stratified bootstrap CI of B − A; MDE = minimum detectable difference "
             "at 80 % power)", "",
             "| split | A | B | B − A [95 % CI] | MDE | paired episodes |", "|---|---:|---:|---:|---:|---:|"]
    for s in splits:
        c = cmp.splits[s]
        lines.append(f"| {s} | {c.a:.2f} | {c.b:.2f} | {difference_cell(c)} | {c.mde:.2f} | {c.episodes} |")
    families = sorted({f for s in splits for f in cmp.splits[s].per_family})
    lines += ["", "| family (B − A) | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for f in families:
        cells = []
        for s in splits:
            d = cmp.splits[s].per_family.get(f)
            cells.append(f"{d.difference:+.1f} (n={d.episodes})" if d else "–")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------------
def plot_scores(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, splits = summary.tasks, summary.splits
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(tasks) + 2), 4))
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        xs = [j + i * width for j in range(len(tasks))]
        o = summary.overall[split]
        ax.bar(xs, [summary.per_task[t].get(split, 0.0) for t in tasks], width,
               label=f"{split}: {o.mean:.1f} [{o.low:.1f}, {o.high:.1f}]")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("score ×100")
    ax.set_ylim(0, 100)
    ax.set_title(summary.label or f"score per task family ({summary.protocol})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve(points: Sequence[tuple[str, Summary]], out: Path) -> None:
    """Overall score per split, with its CI, against successive checkpoints (adapter versions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    splits = sorted({s for _, summary in points for s in summary.overall},
                    key=lambda s: (s not in ("seen", "unseen"), s))
    nan = float("nan")

    def band(summary: Summary, split: str) -> tuple[float, float, float]:
        o = summary.overall.get(split)
        return (o.mean, o.low, o.high) if o else (nan, nan, nan)

    with (out / "curve.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", *splits])
        for label, summary in points:
            writer.writerow([label, *(f"{band(summary, s)[0]:.2f}" for s in splits)])
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [label for label, _ in points]
    for split in splits:
        rows = [band(summary, split) for _, summary in points]
        ax.plot(labels, [r[0] for r in rows], marker="o", label=split)
        ax.fill_between(labels, [r[1] for r in rows], [r[2] for r in rows], alpha=0.2)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("score ×100 (95 % CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120)
    plt.close(fig)


def parse_checkpoint(spec: str, adapters: Sequence[str]) -> dict[str, str]:
    """``v0003`` (every adapter at that version) or ``planner=v0002+executor=v0003``."""
    if "=" not in spec:
        return {name: spec for name in adapters}
    out = {}
    for part in spec.split("+"):
        name, _, version = part.partition("=")
        if not name or not version:
            raise ValueError(f"checkpoint must look like v0003 or planner=v0002+executor=v0003 (got {spec!r})")
        out[name] = version
    return out
