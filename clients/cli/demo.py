"""``glider demo``: README command a. Build and train what is missing, serve it, play ScienceWorld."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Annotated

import typer
from glider.clients.cli._common import (
    adapter_tag,
    console,
    free_port,
    require,
    settings,
    setup_logging,
    wait_ready,
)
from glider.clients.cli.adapters import adapters_init
from glider.clients.cli.backbone import backbone_build
from rich.table import Table


def demo(
    task: str = "find-plant",
    variation: int = 0,
    max_steps: int = 30,
    backend: str = "vllm",
    port: int = 8765,
    protocol: Annotated[str, typer.Option(help="The closing table's evaluation plan (quick: one episode per "
                                               "family and split of GLIDER's protocol; '' skips it).")] = "quick",
    parallel: Annotated[int | None, typer.Option(
        help="Episodes in flight for the table (default: as many as free memory holds, up to 24).")] = None,
    train: Annotated[bool, typer.Option(help="Train SFT adapters first when they are missing.")] = True,
):
    """Build and train what is missing, start a server, play ScienceWorld through /act, print the table.

    The first run builds the backbone, collects expert data, warms the backbone up
    and trains the SFT adapters (``glider.trainer.pipeline``, ~20 minutes on 2
    cores); later runs reuse all of it.
    """
    require("server", "train", "envs", command="demo")
    from glider.clients.envs.scienceworld import ScienceWorld
    from glider.clients.evaluate import EvalConfig, run_episodes, write_report
    from glider.clients.play import play_episode
    from glider.clients.protocols import load_plan
    from glider.clients.sdk import GliderClient

    setup_logging("warning")
    s = settings()
    if train:
        from glider.trainer.pipeline import ensure_trained

        t0 = time.monotonic()
        from glider.trainer.pipeline import Recipe

        ensure_trained(s, Recipe(mode=getattr(s.mode, "value", s.mode)), say=lambda msg: console.rule(msg))
        console.print(f"training pipeline: {time.monotonic() - t0:.0f}s (cached steps are skipped)")
    else:
        from glider.trainer.backbone import is_backbone

        if not is_backbone(s.model_dir()):
            backbone_build(out=s.model_dir())
    adapters_init(model=s.model_dir(), adapters=s.adapters_dir())  # any role still without an adapter
    console.rule(f"starting the server ({backend})")
    grpc_port = free_port()
    env = dict(os.environ, GLIDER_BACKEND=backend, GLIDER_PORT=str(port), GLIDER_HOST="127.0.0.1",
               GLIDER_GRPC_PORT=str(grpc_port))
    server = subprocess.Popen([sys.executable, "-m", "glider.clients.cli", "serve"], env=env)
    try:
        client = GliderClient(f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        health = wait_ready(client, server)
        console.print(f"ready in {time.monotonic() - t0:.1f}s: {health.backend}, mode {health.mode}, "
                      f"adapters {health.adapters}")
        world = ScienceWorld(task, variation)
        console.rule(f"ScienceWorld {task} #{variation}")
        table = Table("step", "subgoal", "action", "reward", "score")

        def show(rec):
            table.add_row(str(rec.step), ("* " if rec.new_subgoal else "  ") + (rec.subgoal or ""),
                          rec.action, f"{rec.reward:+.2f}", f"{rec.score:.2f}")

        try:
            report = play_episode(client, world, max_steps=max_steps, on_step=show)
        finally:
            world.close()
        console.print(f"task: {report.task}")
        console.print(table)
        console.print(f"episode {report.episode_id}: {len(report.steps)} steps, {report.subgoals} subgoals, "
                      f"final score {report.score * 100:.0f}/100 (best {report.max_score * 100:.0f})")
        if protocol:
            console.rule("seen (dev) and unseen (test) variations")
            plan = load_plan(protocol)
            cfg = EvalConfig(plan=plan, server=f"http://127.0.0.1:{port}", transport="rest",
                             parallel=parallel)
            out = s.home / "eval" / f"demo-{protocol}-{health.mode}-{adapter_tag(health.adapters)}"
            t0 = time.monotonic()
            results = run_episodes(cfg, out=out)
            write_report(results, out, plan, label=f"demo agent ({health.mode})")
            from rich.markdown import Markdown

            console.print(Markdown((out / "table.md").read_text()))
            console.print(f"{sum(r.steps for r in results)} steps in {time.monotonic() - t0:.0f}s; "
                          f"table, episodes, transcripts and plot in {out}")
            flat = sorted((s.home / "eval").glob(f"demo-{protocol}-flat-*"), key=lambda p: p.stat().st_mtime)
            if health.mode != "flat" and flat:
                from glider.clients.evaluate import compare_runs, comparison_markdown

                console.print(Markdown(comparison_markdown(compare_runs(flat[-1], out), "flat SFT",
                                                           f"{health.mode} (this agent)")))
            elif health.mode != "flat":
                console.print("no flat agent evaluated yet: `GLIDER_MODE=flat glider demo` trains and "
                              "evaluates one, and the next demo prints the paired comparison")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
