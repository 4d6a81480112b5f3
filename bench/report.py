"""Run the benchmark suite and write one Markdown report: the machine, a table of every headline
figure (each a ratio or a count measured side by side within its bench), and each bench's output.

    .venv/bin/python bench/report.py [--profile quick|full] [--out bench/REPORT.md] [--only NAME,...]

`quick` runs each bench with smaller counts (about 20 minutes on 2 cores: 19 min on 2026-11-26); `full` uses each
bench's own defaults and adds the 20-minute soak. train_throughput measures training speed on a
small slice of expert data; the training-quality benches (quality, orl_ablation, o2o) train for
tens of minutes each and report in docs/results.md. `--only` runs any subset by name and merges it
into the existing report: those benches' figures and sections are replaced, the others kept (the
header says which benches were run when).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# vLLM's log lines ("(EngineCore pid=12) INFO 11-26 06:54:24 [core.py:133] ...") reach stdout when a bench runs the
# engine in its own process; they go to the bench's log, not into the report
ENGINE_LOG = re.compile(r"^(\([\w.-]+ pid=\d+\) )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d")

# name -> (quick arguments, full arguments)
SUITE: dict[str, tuple[list[str], list[str]]] = {
    "act_overhead": (["--steps", "100"], []),
    "concurrency": (["--levels", "1,8,32,64", "--steps", "6"], []),
    "profiles": (["--episodes", "32", "--steps", "6"], []),
    "engine_cores": (["--backbones", "embedded", "--rounds", "1"], []),
    "hier_vs_flat": (["--variations", "1"], []),
    "hotswap": (["--swaps", "5", "--rounds", "2", "--phase-s", "15"], []),
    "pushed_swaps": (["--swaps", "20"], []),
    "store_step": (["--steps", "2000"], []),
    "agent_step": (["--reps", "2000"], []),
    "transports": (["--rounds", "2", "--seconds", "10"], []),
    # scoring beside constrained decoding at the default bound; the full profile's sweep over the bound is
    # constrained only (scoring's requests grow with the candidates' trie: at 16 and 32 episodes a step took 41 s)
    "grounding": (["--methods", "constrained,score", "--candidates", "16", "--steps", "6"],
                  ["--candidates", "4,16,64", "--steps", "12"]),
    "train_throughput": (["--per-task", "1", "--step-bench", "4"], []),
    "soak": (["--episodes", "48", "--steps", "20", "--minutes", "3", "--concurrency", "32",
              "--sample-every", "30"], []),
}


def describe_machine() -> list[str]:
    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    versions = {}
    for module in ("vllm", "torch", "transformers", "peft", "grpc", "fastapi", "redis"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional piece is reported, not fatal
            versions[module] = "absent"
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu}, {os.cpu_count()} cores; memory {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- shared and noisy: compare the ratios (each measured side by side in one run), not absolute times",
    ]


def split_output(stdout: str) -> tuple[str, list[dict], list[str]]:
    """A bench's stdout -> (its report text, its RESULT figures, the engine's log lines)."""
    text, results, engine = [], [], []
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            results.append(json.loads(line[len("RESULT "):]))
        elif ENGINE_LOG.match(line):
            engine.append(line)
        else:
            text.append(line)
    return "\n".join(text), results, engine


SECTION = re.compile(r"^## (\w+) \(`python bench/")


def read_report(path: Path) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """An existing report -> (its header's machine and update lines, rows per bench, section per bench)."""
    if not path.is_file():
        return [], {}, {}
    header, rows, sections, current, table = [], {}, {}, None, False
    for line in path.read_text().splitlines():
        table = table or line.startswith("| bench |")
        if line.startswith("- ") and not table:
            header.append(line)
        elif (m := SECTION.match(line)):
            current = m.group(1)
            sections[current] = [line]
        elif current:
            sections[current].append(line)
        elif line.startswith("| ") and not line.startswith(("| bench |", "|---")):
            rows.setdefault(line.split(" | ")[0][2:], []).append(line)
    return header, rows, {k: v[:-1] if v and not v[-1] else v for k, v in sections.items()}


def run(name: str, args: list[str], log: Path) -> tuple[int, float, str, list[dict]]:
    t0 = time.monotonic()
    with log.open("w") as err:
        done = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], cwd=BENCH.parent,
                              stdout=subprocess.PIPE, stderr=err, text=True)
    text, results, engine = split_output(done.stdout)
    with log.open("a") as err:
        err.write("\n".join(engine) + "\n")
    return done.returncode, time.monotonic() - t0, text, results


def prepare_home() -> None:
    """The serving benches run on the default home's backbone and adapters: build the backbone and
    publish untrained adapters where there are none (adapters already there, trained or not, are kept),
    so that a fresh clone runs the suite instead of failing bench after bench."""
    glider = str(Path(sys.executable).with_name("glider"))
    for command in (["backbone", "build"], ["adapters", "init"]):
        subprocess.run([glider, *command], cwd=BENCH.parent, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", choices=["quick", "full"], default="quick")
    p.add_argument("--out", type=Path, default=BENCH / "REPORT.md")
    p.add_argument("--only", default="", help="comma-separated bench names (default: the serving suite)")
    a = p.parse_args()
    names = [n for n in a.only.split(",") if n] or list(SUITE)
    logs = a.out.parent / "report-logs"
    logs.mkdir(parents=True, exist_ok=True)
    header, rows, sections = read_report(a.out) if a.only else ([], {}, {})
    prepare_home()
    failed = []
    for name in names:
        args = SUITE.get(name, ([], []))[0 if a.profile == "quick" else 1]
        print(f"==> {name} {' '.join(args)}", flush=True)
        code, seconds, text, results = run(name, args, logs / f"{name}.log")
        if code != 0:
            failed.append(name)
        rows[name] = []
        for r in results:
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            rows[name].append(f"| {name} | {r['figure']} | {r['value']:.3f} | {r['target']} | {met} |")
        sections[name] = [f"## {name} (`{' '.join(['python bench/' + name + '.py', *args])}`, {seconds:.0f} s"
                          f"{', FAILED with exit ' + str(code) + ': see ' + str(logs / (name + '.log')) if code else ''})",
                          "", text.strip()]
        print(text, flush=True)
    if a.only and header:  # a partial run: the other benches' figures stay as the last full run wrote them
        header.append(f"- updated: {', '.join(names)} at {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC "
                      f"(`--only {a.only}`); the rest is from the date above")
    else:
        header = describe_machine()
    order = [n for n in SUITE if n in rows or n in sections] + [n for n in {**rows, **sections} if n not in SUITE]
    report = ["# GLIDER benchmark report", "", f"Profile `{a.profile}`: `python bench/report.py --profile {a.profile}`.",
              "", *header, "",
              "| bench | figure | measured | target | met |", "|---|---|---|---|---|",
              *(row for n in order for row in rows.get(n, [])), ""]
    for n in order:
        report += [*sections.get(n, []), ""]
    a.out.write_text("\n".join(report) + "\n")
    print(f"==> wrote {a.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
