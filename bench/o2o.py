"""O2O learning curves: GLIDER vs AWAC vs AC under the same live loop, budget and episode schedule.

The paper's setting, scaled to the embedded backbone: hierarchical SFT adapters
trained offline on every task family but the held-out ones (``--online``),
then adapted online to the held-out families.  For each method a fresh server
(vLLM) serves a fresh copy of the offline registry and records what it plays;
``glider.trainer.o2o`` reads the records, updates critic and planner, publishes,
and waits for the hot-swap before the next iteration.  Every method plays the
same (family, variation) schedule.  Writes ``curves.png`` (score against online
episodes), ``curves.json`` and a Markdown table with the area under each curve.

    .venv/bin/python bench/o2o.py [--iterations 6] [--episodes 8] [--methods glider,awac,ac]

Note: the embedded backbone's warm-up read transcripts of every family,
held-out ones included (language pre-training on the environment's text); the
adapters' SFT did not see the held-out families.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import ROOT, ServerProcess, machine, settings
from glider.clients.envs.scienceworld import TASK_FAMILIES
from glider.server.policy.controller import HierarchyConfig
from glider.trainer.critic import CriticConfig
from glider.trainer.data.collect import load_collected
from glider.trainer.data.hierarchy import SegmentationConfig
from glider.trainer.o2o import O2OConfig, OnlineLearner
from glider.trainer.online import (
    IterationPoint,
    area_under_curve,
    area_with_ci,
    paired_area,
    run_o2o,
)
from glider.trainer.pipeline import SLOW_TASKS, sft_is_current
from glider.trainer.sft import SFTConfig, run_sft
from glider.trainer.training import TrainConfig

ONLINE = "find-plant,find-non-living-thing,lifespan-shortest-lived,power-component-renewable-vs-nonrenewable-energy"


def plot(curves: dict[str, list[IterationPoint]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, curve in curves.items():
        ax.plot([0] + [p.episodes for p in curve], [100 * curve[0].score] + [100 * p.score for p in curve],
                marker="o", label=f"{method} (AUC {area_under_curve(curve):.1f})", drawstyle="steps-pre")
    ax.set_xlabel("online episodes")
    ax.set_ylabel("score of the episodes played (×100)")
    ax.set_title("O2O on held-out ScienceWorld families")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", type=Path, default=ROOT / ".glider" / "bench-o2o")
    p.add_argument("--backbone", type=Path, default=ROOT / ".glider" / "quality-demo" / "backbone")
    p.add_argument("--data", type=Path, default=ROOT / ".glider" / "data" / "expert")
    p.add_argument("--online", default=ONLINE, help="held-out task families, adapted to online")
    p.add_argument("--per-task", type=int, default=6)
    p.add_argument("--sft-epochs", type=float, default=2.0)
    p.add_argument("--methods", default="glider,awac,ac")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--episodes", type=int, default=8, help="online episodes per iteration")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--updates-per-episode", type=int, default=8)
    p.add_argument("--actor-lr", type=float, default=2e-4)
    p.add_argument("--offline-per-task", type=int, default=2, help="expert trajectories interleaved per family")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report-only", action="store_true", help="redraw the report from an earlier run's curves.json")
    args = p.parse_args()

    online = [t for t in args.online.split(",") if t]
    offline_tasks = [t for t in TASK_FAMILIES if t not in online and t not in SLOW_TASKS]
    out = args.out or args.home / "report"
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        curves = {m: [IterationPoint.from_json(pt) for pt in c]
                  for m, c in json.loads((out / "curves.json").read_text()).items()}
        for curve in curves.values():  # curves written before the key fix held per-iteration counts
            if len(curve) > 1 and curve[1].episodes <= curve[0].episodes:
                for i, pt in enumerate(curve):
                    pt.episodes = (i + 1) * args.episodes
        timings = {m: sum(pt.play_s + pt.train_s + pt.swap_s for pt in c) / 60 for m, c in curves.items()}
        trajs = load_collected(args.data, "scienceworld", "train", offline_tasks, args.per_task)
        offline = load_collected(args.data, "scienceworld", "train", offline_tasks, args.offline_per_task)
        report(curves, timings, out, args, online, offline_tasks, trajs, offline)
        return
    model = args.home / "backbone"
    if not model.is_dir():
        args.home.mkdir(parents=True, exist_ok=True)
        shutil.copytree(args.backbone, model)
    s = settings(home=args.home, model=model)
    base_registry = args.home / "adapters"
    trajs = load_collected(args.data, "scienceworld", "train", offline_tasks, args.per_task)
    if not sft_is_current(base_registry, model, ["planner", "executor"]):
        t0 = time.monotonic()
        run_sft(model, trajs, args.home / "runs" / "sft", SFTConfig(
            mode="separate", train=TrainConfig(lr=2e-3, epochs=args.sft_epochs),
            segmentation=SegmentationConfig(max_len=s.c_max)), registry=base_registry,
            hierarchy=HierarchyConfig.from_settings(s))
        print(f"offline SFT on {len(trajs)} trajectories of {len(offline_tasks)} families: "
              f"{(time.monotonic() - t0) / 60:.1f} min", flush=True)
    offline = load_collected(args.data, "scienceworld", "train", offline_tasks, args.offline_per_task)

    curves: dict[str, list[dict]] = {}
    timings: dict[str, float] = {}
    for method in [m for m in args.methods.split(",") if m]:
        registry = args.home / "registries" / method
        records = args.home / "episodes" / method
        shutil.rmtree(registry, ignore_errors=True)
        shutil.rmtree(records, ignore_errors=True)
        shutil.copytree(base_registry, registry, symlinks=True)
        server = ServerProcess(s, GLIDER_MODE="separate", GLIDER_MODEL=str(model), GLIDER_ADAPTERS=str(registry),
                               GLIDER_RECORD_DIR=str(records), GLIDER_ADAPTER_POLL_S="0.5")
        try:
            server.wait_ready()
            cfg = O2OConfig(method=method, tasks=online, iterations=args.iterations,
                            episodes_per_iteration=args.episodes, max_steps=args.max_steps,
                            updates_per_episode=args.updates_per_episode, actor_lr=args.actor_lr,
                            critic=CriticConfig(), parallel=2)
            t0 = time.monotonic()
            learner = OnlineLearner(model, registry, cfg, offline=offline, out_dir=args.home / "runs" / method,
                                    hierarchy=HierarchyConfig.from_settings(s))
            curves[method] = run_o2o(server.url, records, learner, games_dir=args.home / "games",
                                     on_iteration=lambda pt, m=method: print(
                                         f"{m} iteration {pt.iteration}: score {100 * pt.score:.1f} "
                                         f"({pt.play_s:.0f}s play, {pt.train_s:.0f}s train, "
                                         f"{pt.swap_s:.1f}s swap)", flush=True))
            timings[method] = (time.monotonic() - t0) / 60
        finally:
            server.close()
    report(curves, timings, out, args, online, offline_tasks, trajs, offline)


def report(curves, timings, out: Path, args, online, offline_tasks, trajs, offline) -> None:
    plot(curves, out / "curves.png")
    (out / "curves.json").write_text(json.dumps({m: [pt.to_json() for pt in c] for m, c in curves.items()}, indent=2,
                                                default=str))
    lines = [f"# O2O on held-out families ({machine()})\n",
             f"Offline: hierarchical SFT (separate adapters) on {len(trajs)} expert trajectories of "
             f"{len(offline_tasks)} families; online: {', '.join(online)} ({args.iterations} iterations × "
             f"{args.episodes} episodes, {args.max_steps}-step cap, ≤{args.updates_per_episode} planner updates "
             f"per episode, actor lr {args.actor_lr:g}, executor frozen, {len(offline)} expert trajectories "
             f"interleaved). Score: final score clipped at 0, ×100, mean over the iteration's episodes.\n",
             "| method | AUC | first iteration | last iteration | best iteration | minutes |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, curve in curves.items():
        scores = [100 * pt.score for pt in curve]
        auc = area_with_ci(curve) if curve and curve[0].episode_scores else None
        cell = f"{auc.mean:.2f} [{auc.low:.2f}, {auc.high:.2f}]" if auc else f"{area_under_curve(curve):.2f}"
        lines.append(f"| {method} | {cell} | {scores[0]:.1f} | {scores[-1]:.1f} | "
                     f"{max(scores):.1f} | {timings[method]:.1f} |")
    pairs = [(a, b) for a, b in (("awac", "glider"), ("ac", "awac"), ("ac", "glider"))  # B − A: the paper's order
             if a in curves and b in curves and curves[a] and curves[a][0].episode_scores]
    if pairs:
        lines += ["", "| paired AUC difference (same schedule and seeds) | B − A [95 % CI] | MDE | episodes |",
                  "|---|---:|---:|---:|"]
        for a, b in pairs:
            cmp = paired_area(curves[a], curves[b])
            d = cmp.difference
            lines.append(f"| {b} − {a} | {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {cmp.mde:.2f} | {d.episodes} |")
    with (out / "curves.csv").open("w") as f:  # one row per online episode: the curves, re-plottable
        f.write("method,iteration,episodes,family,place,score\n")
        for method, curve in curves.items():
            for pt in curve:
                for place, score in pt.episode_scores.items():
                    f.write(f"{method},{pt.iteration},{pt.episodes},{place.split('/')[1]},{place},{100 * score:.1f}\n")
    lines.append("\n| iteration | " + " | ".join(curves) + " |")
    lines.append("|---:|" + "---:|" * len(curves))
    for i in range(args.iterations):
        lines.append(f"| {i} | " + " | ".join(f"{100 * c[i].score:.1f}" for c in curves.values()) + " |")
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
