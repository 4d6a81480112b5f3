"""Choose a serving setting on the tuning plan, never on the reported one: one trained agent evaluated under
several settings on ``--protocol tune`` (dev variations outside the glider plan and train variations no
recipe trains on), each against the first with its paired 95 % CI.

    .venv/bin/python bench/tune.py --home .glider/quality-demo --mode separate \\
        --variant default \\
        --variant "guards off: GLIDER_GUARD_REPEATED_SUBGOAL=false GLIDER_GUARD_REPEATED_ACTION=false" \\
        --variant "retry 0.4: GLIDER_RETRY_TEMPERATURE=0.4"

A variant is ``NAME`` or ``NAME: VAR=VALUE ...`` (server environment on top of the agent's).  Each
evaluation resumes from its ``episodes.jsonl``; the figures are merged into ``bench/results/tune.json``
after each variant.  Train the agent first (``bench/quality.py --recipe demo --skip-eval``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from common import ROOT, machine
from glider.clients.evaluate import compare_runs, comparison_markdown
from glider.clients.protocols import load_plan
from quality import commit, evaluate


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = spec.partition(":")
    env = {}
    for item in assignments.split():
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("GLIDER_"):
            raise SystemExit(f"variant {spec!r}: expected NAME: GLIDER_VAR=VALUE ...")
        env[key] = value
    return name.strip(), env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, required=True, help="a trained GLIDER_HOME (bench/quality.py's)")
    p.add_argument("--mode", default="separate")
    p.add_argument("--variant", action="append", required=True, help="NAME[: GLIDER_VAR=VALUE ...]; "
                   "the first is the baseline every other is compared with")
    p.add_argument("--protocol", default="tune")
    p.add_argument("--parallel", type=int, default=None, help="episodes in flight (default: as many as memory holds)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "tune.json")
    args = p.parse_args()
    plan = load_plan(args.protocol)
    variants = [parse_variant(v) for v in args.variant]
    print(f"# tune: {args.mode} agent of {args.home} on {machine()}; {plan.describe()}", flush=True)
    runs = {}
    for name, env in variants:
        runs[name] = evaluate(args, plan, args.mode, f" ({name})", env)
        base = variants[0][0]
        comparisons = []
        for other in runs:
            if other == base:
                continue
            cmp = compare_runs(runs[base][0], runs[other][0])
            print(comparison_markdown(cmp, base, other), flush=True)
            comparisons.append({"a": base, "b": other,
                                "splits": {s: {k: v for k, v in asdict(c).items() if k != "per_family"}
                                           for s, c in cmp.splits.items()}})
        results = json.loads(args.results.read_text()) if args.results.is_file() else {}
        key = f"{args.home.resolve().relative_to(ROOT) if args.home.resolve().is_relative_to(ROOT) else args.home}"
        results[f"{key}:{args.mode}:{plan.protocol}"] = {
            "machine": machine(), "commit": commit(), "date": time.strftime("%Y-%m-%d"),
            "variants": {n: {"env": e, "run": str(runs[n][0]),
                             "splits": {s: {k: getattr(o, k) for k in ("episodes", "mean", "low", "high")}
                                        for s, o in runs[n][1].overall.items()}}
                         for n, e in variants if n in runs},
            "comparisons": comparisons,
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
