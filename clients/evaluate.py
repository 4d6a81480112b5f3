"""The evaluation harness: play task families on seen and unseen variations through a server, report like the paper.

Protocol (``PAPER_NOTES.md``): *seen* = ScienceWorld's dev variations, *unseen*
= its test variations; each episode runs to ``max_steps`` (GLIDER's evaluator:
50); an episode's score is its **final** score clipped at 0 (GLIDER's own
evaluator) — the best score reached (ETO's protocol) is reported beside it;
a split's score averages per task family, then over families (macro).  Which
variations are played is drawn from ``seed``, and the server decodes greedily,
so a rerun plays the same episodes (up to ScienceWorld's own unseeded
simulator randomness).

Outputs under ``--out``: ``episodes.csv`` (one row per episode), ``table.md`` and
``table.csv`` (score ×100 per task family and split, and overall),
``summary.json``, ``scores.png`` (per task family), and with several adapter
versions ``curve.png`` / ``curve.csv`` (score against version: a learning curve).
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from glider.clients.play import EpisodeReport

#: the paper's split names and the ScienceWorld splits they mean
SPLITS = {"seen": "dev", "unseen": "test"}


@dataclass
class EvalConfig:
    server: str = "127.0.0.1:50051"
    transport: str = "grpc"
    env: str = "scienceworld"
    tasks: list[str] = field(default_factory=list)  # empty: every task family
    episodes_per_task: int = 2
    splits: tuple[str, ...] = ("seen", "unseen")
    max_steps: int = 50
    parallel: int = 2
    seed: int = 0
    games_dir: Path = Path(".glider/games")


@dataclass
class EpisodeResult:
    split: str  # seen | unseen
    task: str
    position: int  # position in the split's variation list
    score: float  # final score, clipped at 0 (GLIDER's protocol), 0..1
    best: float  # best score reached (ETO's protocol), 0..1
    steps: int
    subgoals: int
    done: bool

    @classmethod
    def from_report(cls, split: str, position: int, report: EpisodeReport) -> EpisodeResult:
        return cls(split=split, task=report.task_name, position=position, score=max(0.0, report.score),
                   best=max(0.0, report.max_score), steps=len(report.steps), subgoals=report.subgoals,
                   done=report.done)


def variation_counts(env: str, tasks: Sequence[str], splits: Sequence[str]) -> tuple[list[str], dict]:
    """The task families (all when ``tasks`` is empty) and how many variations each split has."""
    if env != "scienceworld":
        return list(tasks), {(t, s): 10**6 for t in tasks for s in splits}
    from glider.clients.envs.scienceworld import SPLITS as ENV_SPLITS
    from glider.clients.envs.scienceworld import open_env

    world = open_env()
    try:
        names = list(tasks) or list(world.get_task_names())
        counts = {}
        for task in names:
            world.load(task, 0)
            for split in splits:
                counts[(task, split)] = len(getattr(world, ENV_SPLITS[SPLITS[split]])())
    finally:
        world.close()
    return names, counts


def plan_episodes(cfg: EvalConfig) -> list[tuple[str, str, int]]:
    """(split, task, position) for every episode, drawn reproducibly from the seed."""
    tasks, counts = variation_counts(cfg.env, cfg.tasks, cfg.splits)
    jobs = []
    for split in cfg.splits:
        for task in tasks:
            n = counts[(task, split)]
            rng = random.Random(f"{cfg.seed}/{split}/{task}")
            k = min(cfg.episodes_per_task, n)
            positions = sorted(rng.sample(range(n), k)) if n < 10**6 else list(range(k))
            jobs.extend((split, task, p) for p in positions)
    return jobs


def run_episodes(cfg: EvalConfig, on_done: Callable[[EpisodeResult], None] | None = None
                 ) -> list[EpisodeResult]:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from glider.clients.play import play_job

    plan = plan_episodes(cfg)
    results = []
    with ProcessPoolExecutor(max_workers=max(1, cfg.parallel), mp_context=get_context("spawn")) as pool:
        futures = {
            pool.submit(play_job, (cfg.env, task, SPLITS.get(split, split), pos, cfg.transport, cfg.server,
                                    cfg.max_steps, Path(cfg.games_dir))): (split, pos)
            for split, task, pos in plan
        }
        for future in as_completed(futures):
            split, pos = futures[future]
            result = EpisodeResult.from_report(split, pos, future.result())
            results.append(result)
            if on_done is not None:
                on_done(result)
    results.sort(key=lambda r: (r.split, r.task, r.position))
    return results


# --- the table --------------------------------------------------------------------
def summarize(results: Sequence[EpisodeResult]) -> dict:
    """Score ×100 per (task, split), and overall per split: macro (GLIDER) and micro; best-score too."""
    cells: dict[tuple[str, str], list[EpisodeResult]] = defaultdict(list)
    for r in results:
        cells[(r.task, r.split)].append(r)
    tasks = sorted({r.task for r in results})
    splits = [s for s in ("seen", "unseen") if any(r.split == s for r in results)] + sorted(
        {r.split for r in results} - {"seen", "unseen"})
    per_task = {t: {s: _mean([100 * r.score for r in cells[(t, s)]]) for s in splits if cells[(t, s)]}
                for t in tasks}
    overall = {}
    for s in splits:
        in_split = [r for r in results if r.split == s]
        task_means = [per_task[t][s] for t in tasks if s in per_task[t]]
        overall[s] = {"macro": _mean(task_means), "micro": _mean([100 * r.score for r in in_split]),
                      "best_micro": _mean([100 * r.best for r in in_split]), "episodes": len(in_split),
                      "steps": _mean([r.steps for r in in_split]),
                      "subgoals": _mean([r.subgoals for r in in_split])}
    return {"tasks": tasks, "splits": splits, "per_task": per_task, "overall": overall}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def table_markdown(summary: dict, label: str = "") -> str:
    splits = summary["splits"]
    lines = [f"| task family | {' | '.join(splits)} |", "|---|" + "---:|" * len(splits)]
    for task in summary["tasks"]:
        cells = [f"{summary['per_task'][task][s]:.2f}" if s in summary["per_task"][task] else "–"
                 for s in splits]
        lines.append(f"| {task} | {' | '.join(cells)} |")
    overall = summary["overall"]

    def row(name: str, key: str, fmt: str = "{:.2f}") -> str:
        return f"| {name} | " + " | ".join(fmt.format(overall[s][key]) for s in splits) + " |"

    lines += [row("**overall (macro)**", "macro", "**{:.2f}**"), row("overall (micro)", "micro"),
              row("best score reached (micro)", "best_micro"), row("episodes", "episodes", "{}")]
    head = f"**{label}** — " if label else ""
    return (f"{head}average score ×100 (final score clipped at 0; macro = mean over task families)\n\n"
            + "\n".join(lines) + "\n")


def write_report(results: Sequence[EpisodeResult], out: Path, *, label: str = "", meta: dict | None = None
                 ) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    summary["label"] = label
    summary["meta"] = meta or {}
    with (out / "episodes.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0]).keys()) if results else ["split"])
        writer.writeheader()
        for r in results:
            writer.writerow(asdict(r))
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", *summary["splits"]])
        for task in summary["tasks"]:
            writer.writerow([task, *(f"{summary['per_task'][task].get(s, float('nan')):.2f}"
                                     for s in summary["splits"])])
        writer.writerow(["overall_macro", *(f"{summary['overall'][s]['macro']:.2f}" for s in summary["splits"])])
        writer.writerow(["overall_micro", *(f"{summary['overall'][s]['micro']:.2f}" for s in summary["splits"])])
    (out / "table.md").write_text(table_markdown(summary, label))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_scores(summary, out / "scores.png")
    return summary


def plot_scores(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, splits = summary["tasks"], summary["splits"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(tasks) + 2), 4))
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, [summary["per_task"][t].get(split, 0.0) for t in tasks], width, label=split)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("score ×100")
    ax.set_ylim(0, 100)
    ax.set_title(summary.get("label") or "score per task family")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curve(points: Sequence[tuple[str, dict]], out: Path) -> None:
    """Overall macro score per split against successive checkpoints (adapter versions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    splits = sorted({s for _, summary in points for s in summary["overall"]},
                    key=lambda s: (s not in ("seen", "unseen"), s))
    with (out / "curve.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", *splits])
        for label, summary in points:
            writer.writerow([label, *(f"{summary['overall'].get(s, {}).get('macro', float('nan')):.2f}"
                                      for s in splits)])
    fig, ax = plt.subplots(figsize=(6, 4))
    for split in splits:
        ax.plot([label for label, _ in points],
                [summary["overall"].get(split, {}).get("macro", float("nan")) for _, summary in points],
                marker="o", label=split)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("score ×100 (macro)")
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
