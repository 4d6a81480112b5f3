"""The Agent's per-step CPU work on a long episode, each way side by side in one run.

A step copies the episode's state (so a failed step changes nothing) and builds its prompt from the
recent turns. Measured on the state ``bench/store_step.py`` builds (``--segments`` finished segments of
``--turns`` turns): the copy as a deep copy (before 2026-12-05) and as the step's own copy-on-write
fork, and the executor's prompt with its texts cleaned afresh every time and from the cache.

    .venv/bin/python bench/agent_step.py [--reps 2000] [--segments 8] [--turns 10]
"""

from __future__ import annotations

import argparse
import time

from common import machine, median, result
from store_step import big_state


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(args) -> None:
    from glider.server.policy import prompts
    from glider.server.policy.controller import _fork

    state = big_state(args.segments, args.turns, args.obs_chars)
    seg = state.current
    turns = seg.turns[-args.history:]

    def prompt():
        prompts.executor_prompt(state.task, seg.subgoal, turns, "This room is called the kitchen.", obs_limit=400)

    def prompt_uncached():
        prompts._sanitize_cached.cache_clear()
        prompt()

    rows = {}
    for _ in range(2):  # interleaved rounds: drift on a shared machine hits both ways alike
        for label, fn in (("state copy: deep copy", lambda: state.model_copy(deep=True)),
                          ("state copy: the step's fork", lambda: _fork(state)),
                          ("executor prompt: texts cleaned afresh", prompt_uncached),
                          ("executor prompt: cleaned texts cached", prompt)):
            rows.setdefault(label, []).extend(timed(fn, args.reps))
    print(f"# the Agent's per-step CPU work ({args.segments} segments x {args.turns} turns, history "
          f"{args.history}, {args.reps * 2} repetitions each, {machine()})")
    print("| | p50 ms |\n|---|---|")
    for label, ms in rows.items():
        print(f"| {label} | {median(ms):.4f} |")
    copy = median(rows["state copy: the step's fork"]) / median(rows["state copy: deep copy"])
    text = median(rows["executor prompt: cleaned texts cached"]) / median(rows["executor prompt: texts cleaned afresh"])
    print(f"ratio fork / deep copy: {copy:.3f}; cached / afresh prompt: {text:.3f}")
    result("state copy per step, fork ÷ deep copy (p50)", copy, "")
    result("executor prompt per step, cached ÷ afresh cleaning (p50)", text, "")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--obs-chars", type=int, default=400)
    p.add_argument("--history", type=int, default=10, help="turns the executor's prompt shows")
    main(p.parse_args())
