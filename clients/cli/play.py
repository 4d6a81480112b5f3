"""``glider play``: play episodes through a running server and print a summary per task."""

from __future__ import annotations

from typing import Annotated

import typer
from glider.clients.cli._common import console, require, settings
from rich.table import Table


def play(
    env: Annotated[str, typer.Option(help="scienceworld | textworld | alfworld")] = "scienceworld",
    task: Annotated[str, typer.Option(help="Comma-separated task families (textworld: tw-make family, "
                                           "e.g. tw-cooking).")] = "boil",
    variations: Annotated[str, typer.Option(help="split:positions, e.g. dev:0-9 (seen), test:0-4 (unseen).")]
    = "dev:0-1",
    transport: Annotated[str, typer.Option(help="rest | grpc")] = "rest",
    server: Annotated[str | None, typer.Option(help="http://host:port (rest) or host:port (grpc).")] = None,
    parallel: Annotated[int, typer.Option(help="Environment processes at once.")] = 2,
    max_steps: int = 50,
    grounded: Annotated[bool, typer.Option(
        help="Send the environment's admissible commands with every step: the agent answers one of them.")]
    = False,
    profile: Annotated[str | None, typer.Option(
        help="The server's agent profile that plays the episodes (default: the server's default profile).")]
    = None,
):
    """Play episodes through a running server and print a summary per task."""
    require("envs", command="play")
    from glider.clients.play import parse_variations, play_many
    from rich.progress import Progress

    if env not in ("scienceworld", "textworld", "alfworld"):
        raise typer.BadParameter("scienceworld | textworld | alfworld", param_hint="--env")
    if env == "alfworld":
        from glider.clients.envs.alfworld import ALFWorldUnavailable, data_root

        try:
            data_root()
        except ALFWorldUnavailable as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    try:
        split, positions = parse_variations(variations)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--variations") from None
    tasks = [t for t in task.split(",") if t]
    if server is None:
        server = "127.0.0.1:50051" if transport == "grpc" else "http://127.0.0.1:8000"
    try:
        with Progress(console=console) as progress:
            bar = progress.add_task("episodes", total=len(tasks) * len(positions))
            reports = play_many(tasks, split, positions, transport=transport, server=server,
                                parallel=parallel, max_steps=max_steps, env=env,
                                games_dir=settings().home / "games", grounded=grounded, profile=profile,
                                on_done=lambda r: progress.advance(bar))
    except ValueError as exc:  # a variation the split does not have, an unknown task family
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table("task", "episodes", "score ×100", "best ×100", "steps", "subgoals")
    for name in tasks:
        rs = [r for r in reports if r.task_name == name]
        n = max(1, len(rs))
        table.add_row(name, str(len(rs)), f"{100 * sum(max(0.0, r.score) for r in rs) / n:.1f}",
                      f"{100 * sum(r.max_score for r in rs) / n:.1f}",
                      f"{sum(len(r.steps) for r in rs) / n:.1f}", f"{sum(r.subgoals for r in rs) / n:.1f}")
    console.print(table)
