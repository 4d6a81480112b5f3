"""The poster's ablation grid: flat vs hierarchical × SFT / ORL / SFT+ORL, seen and unseen, on the embedded backbone.

Starts from ``bench/quality.py``'s home (``--recipe demo``: a warmed backbone and the published
SFT adapters ``flat``, ``planner``, ``executor``) and trains, per mode:

* **SFT+ORL** — ``glider.trainer.orl`` from the SFT adapters,
* **ORL** — the same from a fresh LoRA (no behaviour cloning first),

on the same data mix: the expert trajectories SFT saw, perturbed expert replays
(``glider data collect --perturb``) and the SFT agent's own episodes recorded by
the server (``--logs``).  Every version is published without being made
current; one server per mode then serves each configuration in turn (admin
``load``) and the harness plays the same seeded plan for each.  Also measures
the ORL actor's training step against an SFT step on the same sequences, side
by side.

    .venv/bin/python bench/orl_ablation.py [--actor-minutes 6] [--episodes 1] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, ServerProcess, machine, settings
from glider.clients.evaluate import EvalConfig, Summary, run_episodes, table_markdown, write_report
from glider.clients.protocols import load_plan
from glider.server.adapters.registry import AdapterRegistry
from glider.server.policy.controller import HierarchyConfig
from glider.server.policy.modes import ADAPTER_ROLES
from glider.trainer.critic import CriticConfig
from glider.trainer.data.collect import load_collected
from glider.trainer.data.hierarchy import SegmentationConfig
from glider.trainer.data.logs import trajectories_from_logs
from glider.trainer.orl import ORLConfig, run_orl
from glider.trainer.training import TrainConfig
from tqdm import tqdm
from train_throughput import step_times

ADMIN_TOKEN = "bench-admin-token"
LABEL = {"flat": "flat", "separate": "hierarchical"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", type=Path, default=ROOT / ".glider" / "quality-demo")
    p.add_argument("--data", type=Path, default=ROOT / ".glider" / "data" / "expert")
    p.add_argument("--perturbed", type=Path, default=ROOT / ".glider" / "orl" / "perturbed")
    p.add_argument("--logs", type=Path, default=ROOT / ".glider" / "orl" / "episodes")
    p.add_argument("--per-task", type=int, default=6)
    p.add_argument("--modes", default="flat,separate")
    p.add_argument("--runs", default="flat:sft,flat:scratch,separate:sft,separate:scratch",
                   help="which ORL trainings (mode:init) to run; the grid shows what exists")
    p.add_argument("--actor-epochs", type=float, default=1.0)
    p.add_argument("--actor-minutes", type=float, default=6.0,
                   help="actor time budget per mode and init (shared by a mode's adapters by data size)")
    p.add_argument("--lr", type=float, default=5e-4, help="actor lr from SFT")
    p.add_argument("--scratch-lr", type=float, default=2e-3, help="actor lr from a fresh LoRA (SFT's)")
    p.add_argument("--expectile", type=float, default=0.9)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--protocol", default="quick", help="evaluation plan: glider | eto | quick | a plan file")
    p.add_argument("--eval-tasks", default="", help="families to evaluate (default: every trained one); "
                                                    "'half' = every other one in sorted order")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--step-bench", type=int, default=10, help="steps per side of the step-time comparison (0: skip)")
    p.add_argument("--reuse", action="store_true", help="keep ORL versions already trained by an earlier run")
    p.add_argument("--out", type=Path, default=ROOT / ".glider" / "quality-demo" / "orl-report")
    args = p.parse_args()

    model = args.home / "backbone"
    s = settings(home=args.home, model=model)
    registry = s.adapters_dir()
    expert = load_collected(args.data, "scienceworld", "train", None, args.per_task)
    perturbed = load_collected(args.perturbed, "scienceworld", "train", None, args.per_task)
    rollouts = trajectories_from_logs(args.logs, include_open=True) if args.logs.is_dir() else []
    trajs = expert + perturbed + rollouts
    tasks = sorted({t.task_name for t in expert})
    if args.eval_tasks == "half":
        tasks = tasks[::2]
    elif args.eval_tasks:
        tasks = [t for t in args.eval_tasks.split(",") if t]
    plan = load_plan(args.protocol)
    plan.episodes = [e for e in plan.episodes if e.task in tasks]
    args.out.mkdir(parents=True, exist_ok=True)
    state_file = args.out / "versions.json"
    versions: dict = json.loads(state_file.read_text()) if args.reuse and state_file.is_file() else {}
    reg = AdapterRegistry(registry)
    sft_versions = {name: reg.current_version(name) for mode in ("flat", "separate") for name in ADAPTER_ROLES[mode]}
    for name, version in sft_versions.items():
        stage = reg.get(name, version).manifest.get("stage")
        if stage != "sft":
            raise SystemExit(f"{name}@{version} is a {stage!r} adapter; run bench/quality.py first")
    versions["SFT"] = sft_versions
    data_line = (f"data: {len(expert)} expert + {len(perturbed)} perturbed (ε-random detours) + {len(rollouts)} "
                 f"SFT-agent episodes recorded by the server = {len(trajs)} trajectories, "
                 f"{sum(len(t.steps) for t in trajs)} steps; mean return expert "
                 f"{sum(t.final_score for t in expert) / max(1, len(expert)):.2f}, perturbed "
                 f"{sum(t.final_score for t in perturbed) / max(1, len(perturbed)):.2f}, SFT agent "
                 f"{sum(t.final_score for t in rollouts) / max(1, len(rollouts)):.2f}")
    print(data_line, flush=True)
    train_rows = []
    runs = [tuple(r.split(":")) for r in args.runs.split(",") if r]
    for mode in [m for m in args.modes.split(",") if m]:
        for init in [i for m, i in runs if m == mode]:
            key = f"{'SFT+ORL' if init == 'sft' else 'ORL'}/{mode}"
            metrics_file = args.home / "runs" / f"orl-{mode}-{init}" / "orl_metrics.json"
            if key not in versions or not metrics_file.is_file():
                cfg = ORLConfig(mode=mode, init=init, segmentation=SegmentationConfig(max_len=s.c_max),
                                critic=CriticConfig(expectile=args.expectile, lam=args.lam),
                                actor=TrainConfig(lr=args.lr if init == "sft" else args.scratch_lr,
                                                  epochs=args.actor_epochs, max_minutes=args.actor_minutes,
                                                  warmup_steps=5))
                metrics = run_orl(model, trajs, args.home / "runs" / f"orl-{mode}-{init}", cfg, registry=registry,
                                  hierarchy=HierarchyConfig.from_settings(s.model_copy(update={"mode": mode})),
                                  make_current=False, start_versions=sft_versions)
                versions[key] = {n: m.published for n, m in metrics.adapters.items()}
                state_file.write_text(json.dumps(versions, indent=2))
            saved = json.loads(metrics_file.read_text())  # also for runs a resumed ablation did earlier
            for name, m in saved["adapters"].items():
                for role, r in m["roles"].items():
                    train_rows.append(
                        f"| {key} | {name}/{role} | {r['decisions']:,} | "
                        f"{' '.join(f'{k} {v:.4f}' for k, v in r['critic_loss'].items())} | "
                        f"{r.get('advantage_mean', 0):+.3f}±{r.get('advantage_std', 0):.3f} | "
                        f"{100 * r.get('clipped_share', 0):.1f}% | {m['steps']} | "
                        f"{m['first_loss']:.3f}→{m['train_loss']:.3f} | {m['seconds'] / 60:.1f} |")
    steps = step_times(model, registry, expert + perturbed + rollouts, s, args.step_bench,
                       args.home / "runs" / "step-bench") if args.step_bench else None

    summaries: dict = {}
    tables = []
    for mode in [m for m in args.modes.split(",") if m]:
        server = ServerProcess(s, GLIDER_MODE=mode, GLIDER_MODEL=str(model), GLIDER_ADAPTERS=str(registry),
                               GLIDER_RECORD="false", GLIDER_ADMIN_TOKEN=ADMIN_TOKEN)
        try:
            server.wait_ready()
            from glider.clients.sdk import GliderClient

            for stage in ("SFT", "ORL", "SFT+ORL"):
                key = stage if stage == "SFT" else f"{stage}/{mode}"
                if key not in versions:
                    continue
                wanted = {n: v for n, v in versions[key].items() if n in ADAPTER_ROLES[mode]}
                label = f"{LABEL[mode]} {stage}"
                run_out = args.out / f"{mode}-{stage.replace('+', '-')}"
                done = run_out / "summary.json"
                earlier = Summary.load(done) if args.reuse and done.is_file() else None
                if earlier is not None and earlier.meta.get("versions") == wanted and earlier.meta.get("tasks") == tasks:
                    summaries[label] = earlier
                    tables.append(f"### {label} ({wanted}; earlier run)\n\n" + table_markdown(summaries[label]))
                    continue
                with GliderClient(server.url) as client:
                    for name, version in wanted.items():
                        client.load_adapter(name, version, token=ADMIN_TOKEN)
                cfg = EvalConfig(plan=plan, server=server.url, transport="rest", parallel=args.parallel)
                t0 = time.monotonic()
                with tqdm(total=len(plan.episodes), desc=label, unit="episode") as bar:
                    results = run_episodes(cfg, on_done=lambda r: bar.update(1))
                summary = write_report(results, run_out, plan, label=label, meta={"versions": wanted, "tasks": tasks})
                summaries[label] = summary
                tables.append(f"### {label} ({wanted}; {(time.monotonic() - t0) / 60:.1f} min)\n\n"
                              + table_markdown(summary))
                print(tables[-1], flush=True)
        finally:
            server.close()

    base = summaries["flat SFT"].overall if "flat SFT" in summaries else None
    report = [f"# ORL ablation on the embedded backbone ({machine()})\n", data_line + ".\n",
              f"Evaluation: {plan.describe()} (score ×100).\n",
              "| agent | seen | unseen | seen ÷ flat SFT | unseen ÷ flat SFT | steps/episode | subgoals/episode |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, summary in summaries.items():
        o = summary.overall
        ratio = [o[split].mean / base[split].mean if base and base[split].mean else float("nan")
                 for split in ("seen", "unseen")]
        report.append(f"| {label} | {o['seen'].mean:.2f} | {o['unseen'].mean:.2f} | {ratio[0]:.2f}× | "
                      f"{ratio[1]:.2f}× | {o['seen'].steps:.1f} | {o['seen'].subgoals:.1f} |")
    report += ["\n## Training\n", "| run | adapter/role | decisions | critic loss (last batch) | advantage | clipped | "
               "actor steps | actor loss first→last | minutes |", "|---|---|---:|---|---|---:|---:|---|---:|",
               *train_rows]
    if steps:
        report.append(f"\nStep time, executor sequences, {steps['steps']} steps each, side by side: SFT "
                      f"{steps['sft_s_per_step']:.2f} s/step, ORL actor {steps['orl_actor_s_per_step']:.2f} s/step "
                      f"(**{steps['orl_actor_s_per_step'] / steps['sft_s_per_step']:.2f}×**); the critic stage "
                      f"(features + {CriticConfig().steps} head updates on {steps['decisions']:,} decisions) took "
                      f"{steps['critic_stage_s']:.0f} s once per stage.")
    text = "\n".join(report) + "\n\n" + "\n\n".join(tables) + "\n"
    (args.out / "README.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps({"versions": versions, "step_times": steps,
                                                       "overall": {k: v.to_dict()["overall"]
                                                                   for k, v in summaries.items()}},
                                                      indent=2))
    print(text)


if __name__ == "__main__":
    main()
