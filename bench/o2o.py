"""O2O learning curves: GLIDER vs AWAC vs AC under the same live loop, budget and episode schedule.

The paper's setting, scaled to the embedded backbone: hierarchical SFT adapters
trained offline on every task family but the held-out ones (``--online``),
then adapted online to the held-out families.  For each method a fresh server
(vLLM) serves a fresh copy of the offline registry and records what it plays;
``glider.trainer.o2o`` reads the records, updates critic and planner, publishes,
and waits for the hot-swap before the next iteration.  Every method plays the
same (family, variation) schedule.  Writes ``curves.png`` (score against online
episodes), ``curves.json`` and a Markdown table with the area under each curve.

    .venv/bin/python bench/o2o.py [--iterations 6] [--episodes 8] [--methods glider,awac,ac] [--seeds 0,1,2]
    .venv/bin/python bench/o2o.py --offline-orl-minutes 20 --adapt-executor --offline-share 0.25 --eval-episodes 3

Online episodes are sampled (``--temperature``, each with its own recorded seed drawn from the run's
seed); after each update the server also plays ``--eval-episodes`` greedy episodes per held-out family on
their dev variations, which online play never visits: the greedy curve is what the published policy does.
Each (method, seed) is a run of its own under ``<home>/runs/<method>-s<seed>``; a finished run is kept, so
a run cut off carries on with the next one when started again with the same arguments.

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
from glider.clients.stats import blocked_difference
from glider.server.policy.controller import HierarchyConfig
from glider.trainer.critic import CriticConfig
from glider.trainer.data.collect import collect, load_collected
from glider.trainer.data.hierarchy import SegmentationConfig
from glider.trainer.o2o import O2OConfig, OnlineLearner
from glider.trainer.online import (
    IterationPoint,
    area_with_ci,
    paired_area,
    run_o2o,
    seed_areas,
    seed_blocked_area,
)
from glider.trainer.pipeline import SLOW_TASKS, sft_is_current
from glider.trainer.sft import SFTConfig, run_sft
from glider.trainer.training import TrainConfig

ONLINE = "find-plant,find-non-living-thing,lifespan-shortest-lived,power-component-renewable-vs-nonrenewable-energy"


Runs = dict[int, list[IterationPoint]]  # seed -> its curve


def mean_curve(runs: Runs, greedy: bool) -> tuple[list[int], list[float]]:
    """(online episodes, score ×100) averaged over the seeds, from the offline policy's point on (greedy)."""
    curves = list(runs.values())
    n = min(len(c) for c in curves)
    xs = [curves[0][i].episodes for i in range(n)]
    if greedy:
        before = [100 * sum(c[0].eval_before.values()) / max(1, len(c[0].eval_before)) for c in curves]
        ys = [100 * sum(c[i].eval_score or 0.0 for c in curves) / len(curves) for i in range(n)]
        return [0] + xs, [sum(before) / len(before)] + ys
    return xs, [100 * sum(c[i].score for c in curves) / len(curves) for i in range(n)]


def plot(curves: dict[str, Runs], out: Path, greedy: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("online episodes played (sampled)", False)] + ([("greedy evaluation (dev variations)", True)]
                                                              if greedy else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.0), squeeze=False)
    for ax, (title, kind) in zip(axes[0], panels, strict=True):
        for method, runs in curves.items():
            xs, ys = mean_curve(runs, kind)
            auc = area_with_ci(runs, greedy=kind)
            ax.plot(xs, ys, marker="o", label=f"{method} (AUC {auc.mean:.1f} [{auc.low:.1f}, {auc.high:.1f}])")
        ax.set_xlabel("online episodes")
        ax.set_ylabel(f"score ×100, mean over {len(next(iter(curves.values())))} seeds")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("O2O on held-out ScienceWorld families")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def offline_stage(args, model: Path, registry: Path, s, offline_tasks: list[str], trajs: list) -> None:
    """Hierarchical SFT on the offline families, then (``--offline-orl-minutes``) ORL on expert and perturbed
    replays of the same families: built once, every method and seed starts from it."""
    from glider.server.adapters.registry import AdapterRegistry
    from glider.trainer.orl import ORLConfig, run_orl

    hierarchy = HierarchyConfig.from_settings(s)
    if not sft_is_current(registry, model, ["planner", "executor"]):
        t0 = time.monotonic()
        run_sft(model, trajs, args.home / "runs" / "sft", SFTConfig(
            mode="separate", train=TrainConfig(lr=2e-3, epochs=args.sft_epochs),
            segmentation=SegmentationConfig(max_len=s.c_max)), registry=registry, hierarchy=hierarchy)
        print(f"offline SFT on {len(trajs)} trajectories of {len(offline_tasks)} families: "
              f"{(time.monotonic() - t0) / 60:.1f} min", flush=True)
    if not args.offline_orl_minutes:
        return
    reg = AdapterRegistry(registry)
    if all((reg.get(name).manifest or {}).get("stage") == "orl" for name in ("planner", "executor")):
        return  # built by an earlier run
    perturbed = args.data.parent / f"perturbed-{args.perturb:g}"
    collect(perturbed, per_task=args.per_task, tasks=offline_tasks, perturb=args.perturb,
            games_dir=args.home / "games")
    data = trajs + load_collected(perturbed, "scienceworld", "train", offline_tasks, args.per_task)
    t0 = time.monotonic()
    run_orl(model, data, args.home / "runs" / "orl", ORLConfig(
        mode="separate", init="sft", segmentation=SegmentationConfig(max_len=s.c_max),
        actor=TrainConfig(lr=5e-4, epochs=4.0, batch_tokens=2048, warmup_steps=5,
                          max_minutes=args.offline_orl_minutes)), registry=registry, hierarchy=hierarchy)
    print(f"offline ORL on {len(data)} trajectories: {(time.monotonic() - t0) / 60:.1f} min", flush=True)


def load_run(path: Path, iterations: int) -> list[IterationPoint] | None:
    """A finished run's curve (None: not run, or cut off before its last iteration)."""
    if not path.is_file():
        return None
    curve = [IterationPoint.from_json(pt) for pt in json.loads(path.read_text())]
    return curve if len(curve) >= iterations else None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", type=Path, default=ROOT / ".glider" / "bench-o2o")
    p.add_argument("--backbone", type=Path, default=ROOT / ".glider" / "quality-demo" / "backbone")
    p.add_argument("--data", type=Path, default=ROOT / ".glider" / "data" / "expert")
    p.add_argument("--online", default=ONLINE, help="held-out task families, adapted to online")
    p.add_argument("--per-task", type=int, default=6)
    p.add_argument("--sft-epochs", type=float, default=2.0)
    p.add_argument("--offline-orl-minutes", type=float, default=0.0,
                   help="ORL after the offline SFT (expert + perturbed replays of the offline families); 0: none")
    p.add_argument("--perturb", type=float, default=0.2, help="--offline-orl: the perturbed replays' ε")
    p.add_argument("--methods", default="glider,awac,ac")
    p.add_argument("--seeds", default="0", help="one run per method and seed (the online episodes' sampling, "
                                                "the learner's batches)")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--episodes", type=int, default=8, help="online episodes per iteration")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--updates-per-episode", type=int, default=8)
    p.add_argument("--actor-lr", type=float, default=2e-4)
    p.add_argument("--temperature", type=float, default=O2OConfig.temperature,
                   help="online episodes' sampling temperature (0: greedy)")
    p.add_argument("--offline-share", type=float, default=O2OConfig.offline_share)
    p.add_argument("--adapt-executor", action="store_true", help="adapt the executor too (the paper: planner)")
    p.add_argument("--eval-episodes", type=int, default=0,
                   help="greedy episodes per held-out family on dev variations after each update; 0: none")
    p.add_argument("--offline-per-task", type=int, default=2, help="expert trajectories interleaved per family")
    p.add_argument("--critic", default="{}", help='CriticConfig fields as JSON, e.g. \'{"advantage": "mc"}\' '
                                                  "(the method sets the update rule)")
    p.add_argument("--against", type=Path, default=None,
                   help="another home's finished runs of the same methods and seeds (one setting changed, e.g. "
                        "--offline-share): each method here is compared with its run there, paired by seed")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report-only", action="store_true", help="redraw the report from the finished runs")
    args = p.parse_args()

    online = [t for t in args.online.split(",") if t]
    offline_tasks = [t for t in TASK_FAMILIES if t not in online and t not in SLOW_TASKS]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    out = args.out or args.home / "report"
    out.mkdir(parents=True, exist_ok=True)
    trajs = load_collected(args.data, "scienceworld", "train", offline_tasks, args.per_task)
    offline = load_collected(args.data, "scienceworld", "train", offline_tasks, args.offline_per_task)
    curves: dict[str, Runs] = {m: {} for m in methods}
    timings: dict[str, float] = {m: 0.0 for m in methods}
    runs_dir = args.home / "runs"
    if not args.report_only:
        model = args.home / "backbone"
        if not model.is_dir():
            args.home.mkdir(parents=True, exist_ok=True)
            shutil.copytree(args.backbone, model)
        s = settings(home=args.home, model=model)
        base_registry = args.home / "adapters"
        offline_stage(args, model, base_registry, s, offline_tasks, trajs)
    for method in methods:
        for seed in seeds:
            run = runs_dir / f"{method}-s{seed}"
            curve = load_run(run / "curve.json", args.iterations)
            if curve is None and not args.report_only:
                curve = play(args, s, model, base_registry, method, seed, online, offline, run)
            if curve:
                curves[method][seed] = curve
                timings[method] += sum(pt.play_s + pt.train_s + pt.swap_s for pt in curve) / 60
    curves = {m: runs for m, runs in curves.items() if runs}
    against = {}
    if args.against:  # the same methods and seeds under the other home's setting
        against = {m: {seed: c for seed in seeds
                       if (c := load_run(args.against / "runs" / f"{m}-s{seed}" / "curve.json", args.iterations))}
                   for m in curves}
    report(curves, timings, out, args, online, offline_tasks, trajs, offline, against)


def play(args, s, model: Path, base_registry: Path, method: str, seed: int, online: list[str], offline: list,
         run: Path) -> list[IterationPoint]:
    """One method and seed: a fresh copy of the offline registry, a fresh server, the loop."""
    registry = args.home / "registries" / f"{method}-s{seed}"
    records = args.home / "episodes" / f"{method}-s{seed}"
    for stale in (registry, records, run):  # a run cut off starts again from the offline policy
        shutil.rmtree(stale, ignore_errors=True)
    shutil.copytree(base_registry, registry, symlinks=True)
    server = ServerProcess(s, GLIDER_MODE="separate", GLIDER_MODEL=str(model), GLIDER_ADAPTERS=str(registry),
                           GLIDER_RECORD_DIR=str(records), GLIDER_ADAPTER_POLL_S="0.5")
    try:
        server.wait_ready()
        cfg = O2OConfig(method=method, tasks=online, iterations=args.iterations,
                        episodes_per_iteration=args.episodes, max_steps=args.max_steps,
                        updates_per_episode=args.updates_per_episode, actor_lr=args.actor_lr,
                        critic=CriticConfig(**{**json.loads(args.critic), "seed": seed}), parallel=2, seed=seed,
                        temperature=args.temperature or None, offline_share=args.offline_share,
                        adapt_executor=args.adapt_executor, eval_episodes=args.eval_episodes)
        learner = OnlineLearner(model, registry, cfg, offline=offline, out_dir=run,
                                hierarchy=HierarchyConfig.from_settings(s))
        return run_o2o(server.url, records, learner, games_dir=args.home / "games",
                       on_iteration=lambda pt: print(
                           f"{method} seed {seed} iteration {pt.iteration}: online {100 * pt.score:.1f}"
                           + ("" if pt.eval_score is None else f", greedy {100 * pt.eval_score:.1f}")
                           + f" ({pt.play_s:.0f}s play, {pt.train_s:.0f}s train, {pt.swap_s:.1f}s swap)",
                           flush=True))
    finally:
        server.close()


def _auc_cell(runs: Runs, greedy: bool) -> str:
    auc = area_with_ci(runs, greedy=greedy)
    return f"{auc.mean:.2f} [{auc.low:.2f}, {auc.high:.2f}]"


def report(curves: dict[str, Runs], timings, out: Path, args, online, offline_tasks, trajs, offline,
           against: dict[str, Runs] | None = None) -> None:
    greedy = any(pt.eval_scores for runs in curves.values() for c in runs.values() for pt in c)
    plot(curves, out / "curves.png", greedy)
    (out / "curves.json").write_text(json.dumps(
        {m: {str(seed): [pt.to_json() for pt in c] for seed, c in runs.items()} for m, runs in curves.items()},
        indent=2, default=str))
    start = "SFT + ORL" if args.offline_orl_minutes else "SFT"
    lines = [f"# O2O on held-out families ({machine()})\n",
             f"Offline: hierarchical {start} (separate adapters) on {len(trajs)} expert trajectories of "
             f"{len(offline_tasks)} families; online: {', '.join(online)} ({args.iterations} iterations × "
             f"{args.episodes} episodes sampled at temperature {args.temperature:g}, {args.max_steps}-step cap, "
             f"≤{args.updates_per_episode} updates per episode, actor lr {args.actor_lr:g}, executor "
             f"{'adapted' if args.adapt_executor else 'frozen'}, offline share {args.offline_share:g} of "
             f"{len(offline)} expert trajectories, critic {args.critic}); seeds "
             f"{', '.join(str(k) for k in next(iter(curves.values())))}."
             + (f" Greedy evaluation: {args.eval_episodes} dev variations per family after each update." if greedy
                else "") + " Score: final score clipped at 0, ×100; AUC: mean over the episodes, 95 % bootstrap CI "
             "(episodes resampled within families; a run's episodes share one learner, so it understates the "
             "spread between runs).\n",
             "| method | AUC online (sampled) | " + ("AUC greedy | greedy before → last | " if greedy else "")
             + "minutes |", "|---|---:|" + ("---:|---:|" if greedy else "") + "---:|"]
    for method, runs in curves.items():
        cells = [_auc_cell(runs, False)]
        if greedy:
            _, ys = mean_curve(runs, True)
            cells += [_auc_cell(runs, True), f"{ys[0]:.1f} → {ys[-1]:.1f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {timings[method]:.1f} |")
    seeds = sorted({seed for runs in curves.values() for seed in runs})
    pairs = [(a, b) for a, b in (("awac", "glider"), ("ac", "awac"), ("ac", "glider"))  # B − A: the paper's order
             if a in curves and b in curves]
    kinds = (False, True) if greedy else (False,)
    lines += ["", "| method | curve | " + " | ".join(f"AUC seed {seed}" for seed in seeds) + " |",
              "|---|---|" + "---:|" * len(seeds)]
    for method, runs in curves.items():
        for kind in kinds:
            per_seed = seed_areas(runs, greedy=kind)
            lines.append(f"| {method} | {'greedy' if kind else 'online'} | "
                         + " | ".join(f"{per_seed[s]:.2f}" if s in per_seed else "–" for s in seeds) + " |")
    if greedy:  # did adapting online beat the offline start it came from, on the same greedy episodes?
        lines += ["", "| method | greedy AUC − its offline start, seeds as blocks [95 % t CI] | per seed |",
                  "|---|---:|---|"]
        for method, runs in curves.items():
            start = {seed: 100 * sum(c[0].eval_before.values()) / len(c[0].eval_before)
                     for seed, c in runs.items() if c and c[0].eval_before}
            after = seed_areas(runs, greedy=True)
            d = blocked_difference(start, after)
            lines.append(f"| {method} | {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | "
                         + ", ".join(f"{after[s] - start[s]:+.1f}" for s in seeds if s in start and s in after) + " |")
    if pairs:
        lines += ["", "| paired AUC difference (same schedule and seeds) | curve | B − A, seeds as blocks [95 % t CI] "
                  "| per seed | episodes pooled [95 % bootstrap CI] | MDE | episodes |",
                  "|---|---|---:|---|---:|---:|---:|"]
        for kind in kinds:
            for a, b in pairs:
                blocked = seed_blocked_area(curves[a], curves[b], greedy=kind)
                per_seed = ", ".join(f"{sb - sa:+.1f}" for (sa, sb) in (
                    (seed_areas(curves[a], greedy=kind).get(s), seed_areas(curves[b], greedy=kind).get(s))
                    for s in seeds) if sa is not None and sb is not None)
                cmp = paired_area(curves[a], curves[b], greedy=kind)
                d = cmp.difference
                lines.append(f"| {b} − {a} | {'greedy' if kind else 'online'} | {blocked.mean:+.2f} "
                             f"[{blocked.low:+.2f}, {blocked.high:+.2f}] | {per_seed} | {d.mean:+.2f} [{d.low:+.2f}, "
                             f"{d.high:+.2f}] | {cmp.mde:.2f} | {d.episodes} |")
    if against := {m: runs for m, runs in (against or {}).items() if runs}:
        lines += ["", f"| {args.home.name} − {args.against.name} (same method and seeds) | curve | B − A, seeds as blocks "
                  "[95 % t CI] | per seed |", "|---|---|---:|---|"]
        for kind in kinds:
            for m, base in against.items():
                d = seed_blocked_area(base, curves[m], greedy=kind)
                a_seed, b_seed = seed_areas(base, greedy=kind), seed_areas(curves[m], greedy=kind)
                lines.append(f"| {m} | {'greedy' if kind else 'online'} | {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | "
                             + ", ".join(f"{b_seed[s] - a_seed[s]:+.1f}" for s in seeds if s in a_seed and s in b_seed)
                             + " |")
    if pairs or against:
        lines.append("\nSeeds as blocks is the comparison to read: a Student-t interval over the seeds' paired AUC "
                     "differences (n − 1 degrees of freedom, so ±4.3 standard errors with three seeds). The pooled "
                     "bootstrap treats episodes of one run as independent and understates the spread between runs.")
    with (out / "curves.csv").open("w") as f:  # one row per episode: the curves, re-plottable
        f.write("method,seed,iteration,episodes,curve,family,place,score\n")
        for method, runs in curves.items():
            for seed, curve in runs.items():
                for pt in curve:
                    rows = [("online", place, sc) for place, sc in pt.episode_scores.items()]
                    rows += [("greedy", f"{pt.iteration}/{place}", sc) for place, sc in pt.eval_scores.items()]
                    rows += [("greedy-before", f"-1/{place}", sc) for place, sc in pt.eval_before.items()]
                    for kind, place, score in rows:
                        f.write(f"{method},{seed},{pt.iteration},{pt.episodes},{kind},{place.split('/')[1]},"
                                f"{place},{100 * score:.1f}\n")
    lines.append("\n| iteration | " + " | ".join(f"{m} online" + (f" | {m} greedy" if greedy else "") for m in curves)
                 + " |")
    lines.append("|---:|" + "---:|" * (len(curves) * (2 if greedy else 1)))
    per = {m: (mean_curve(runs, False)[1], mean_curve(runs, True)[1][1:] if greedy else []) for m, runs in curves.items()}
    for i in range(min(len(v[0]) for v in per.values())):
        lines.append(f"| {i} | " + " | ".join(f"{on[i]:.1f}" + (f" | {gr[i]:.1f}" if greedy else "")
                                              for on, gr in per.values()) + " |")
    text = "\n".join(lines) + "\n"
    (out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
