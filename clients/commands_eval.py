"""``glider eval``: the evaluation harness on the command line (see ``glider.clients.evaluate``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

console = Console()


def evaluate_command(
    out: Annotated[Path, typer.Option(help="Directory for table.md/csv, episodes.csv, PNG plots.")],
    server: Annotated[str | None, typer.Option(help="host:port (grpc) or http://host:port (rest).")] = None,
    transport: Annotated[str, typer.Option(help="grpc | rest")] = "grpc",
    env: Annotated[str, typer.Option(help="scienceworld | textworld")] = "scienceworld",
    tasks: Annotated[str, typer.Option(help="Comma-separated task families (default: all).")] = "",
    episodes: Annotated[int, typer.Option(help="Episodes per task family and split.")] = 2,
    splits: Annotated[str, typer.Option(help="seen (dev variations), unseen (test variations).")]
    = "seen,unseen",
    max_steps: Annotated[int, typer.Option(help="Step limit per episode (GLIDER's evaluator: 50).")] = 50,
    parallel: Annotated[int, typer.Option(help="Environment processes at once.")] = 2,
    seed: Annotated[int, typer.Option(help="Draws which variations are played.")] = 0,
    label: str = "",
    checkpoints: Annotated[str, typer.Option(
        help="Evaluate several adapter versions in turn (a learning curve): 'v0002,v0003' or "
             "'planner=v0002+executor=v0003,...'; needs the admin token (GLIDER_ADMIN_TOKEN).")] = "",
    admin_url: Annotated[str, typer.Option(envvar="GLIDER_ADMIN_URL",
                                           help="The server's REST address for the admin calls of --checkpoints.")]
    = "http://127.0.0.1:8000",
):
    """Play N episodes per task family on seen and unseen variations and write the paper's table."""
    from glider.clients.evaluate import (
        EvalConfig,
        parse_checkpoint,
        plan_episodes,
        plot_curve,
        run_episodes,
        write_report,
    )
    from glider.clients.sdk import GliderClient
    from rich.progress import Progress

    split_list = tuple(s for s in splits.split(",") if s)
    if not split_list or any(s not in ("seen", "unseen") for s in split_list):
        raise typer.BadParameter("seen and/or unseen", param_hint="--splits")
    if transport not in ("grpc", "rest"):
        raise typer.BadParameter("grpc | rest", param_hint="--transport")
    if server is None:
        server = "127.0.0.1:50051" if transport == "grpc" else "http://127.0.0.1:8000"
    cfg = EvalConfig(server=server, transport=transport, env=env, tasks=[t for t in tasks.split(",") if t],
                     episodes_per_task=episodes, splits=split_list, max_steps=max_steps, parallel=parallel,
                     seed=seed)
    total = len(plan_episodes(cfg))

    def one_run(run_label: str, run_out: Path, meta: dict) -> dict:
        with Progress(console=console) as progress:
            bar = progress.add_task(run_label or "episodes", total=total)
            results = run_episodes(cfg, on_done=lambda r: progress.advance(bar))
        summary = write_report(results, run_out, label=run_label, meta=meta)
        console.print(Markdown((run_out / "table.md").read_text()))
        return summary

    meta = {"server": server, "transport": transport, "episodes_per_task": episodes, "max_steps": max_steps,
            "seed": seed}
    if not checkpoints:
        one_run(label, out, meta)
        console.print(f"written to {out}")
        return
    token = os.environ.get("GLIDER_ADMIN_TOKEN")
    if not token:
        raise typer.BadParameter("--checkpoints needs GLIDER_ADMIN_TOKEN (the server's admin token)")
    rest = server if server.startswith("http") else admin_url
    with GliderClient(rest) as client:
        health = client.ready()
        if health is None:
            raise typer.BadParameter(f"server at {rest} is not ready", param_hint="--server")
        original = dict(health.adapters)
        points = []
        try:
            for spec in [c for c in checkpoints.split(",") if c]:
                versions = parse_checkpoint(spec, list(original))
                for name, version in versions.items():
                    client.load_adapter(name, version, token=token)
                points.append((spec, one_run(spec, out / spec.replace("=", "-").replace("+", "_"),
                                             {**meta, "adapters": versions})))
        finally:
            for name, version in original.items():  # leave the server as it was
                client.load_adapter(name, version, token=token)
    plot_curve(points, out)
    (out / "curve.json").write_text(json.dumps([{"checkpoint": c, "overall": s["overall"]} for c, s in points],
                                               indent=2))
    console.print(f"learning curve written to {out / 'curve.png'}")
