"""``glider adapters ...``: the LoRA adapters in the registry the server watches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from glider.clients.cli._common import console, default_help, require, settings, setup_logging
from glider.server.policy.modes import ALL_ADAPTERS
from glider.trainer.lora import LoraSettings
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="LoRA adapters in the registry.")



@app.command("init")
def adapters_init(
    model: Annotated[Path | None, typer.Option(help="Backbone directory (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
    names: Annotated[str, typer.Option(help="Adapters to create.")] = ",".join(ALL_ADAPTERS),
    rank: Annotated[int | None, typer.Option(help=default_help("LoRA rank (alpha = 2 × rank).", LoraSettings().r))]
    = None,
    force: bool = False,
):
    """Publish an untrained LoRA adapter for each role that has none for this backbone.

    A server always starts with real adapters loaded; after a backbone rebuild the
    old adapters no longer fit it, and a fresh version is published.
    """
    require("train", command="adapters init")
    from glider.server.adapters.registry import (
        AdapterNotFound,
        AdapterRegistry,
        base_model_identity,
    )
    from glider.trainer.lora import create_adapter
    from glider.trainer.publish import publish_adapter

    setup_logging()
    s = settings(model=model, adapters=adapters)
    registry = AdapterRegistry(s.adapters_dir())
    import tempfile

    base = base_model_identity(s.model_dir())
    for name in [n for n in names.split(",") if n]:
        try:
            current = registry.get(name)
        except AdapterNotFound:
            current = None
        same_base = current is not None and (current.manifest.get("base_model") or {}).get(
            "config_sha256") == base["config_sha256"]
        if same_base and not force:
            console.print(f"{name}: has {current.version} for this backbone already")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            lora = LoraSettings() if rank is None else LoraSettings(r=rank, alpha=2 * rank)
            create_adapter(s.model_dir(), Path(tmp), lora)
            published = publish_adapter(s.adapters_dir(), name, Path(tmp), s.model_dir(), stage="init")
        console.print(f"{name}: published {published.version} at {published.path}")


@app.command("publish")
def adapters_publish(
    source: Annotated[Path, typer.Argument(help="A peft adapter directory.")],
    role: Annotated[str, typer.Option("--role", "--name", help="Adapter name: planner, executor, ...")],
    model: Annotated[Path | None, typer.Option(help="Backbone it was trained on (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
    stage: str = "manual",
    keep: Annotated[int | None, typer.Option(help="Prune to this many versions afterwards.")] = None,
):
    """Publish SOURCE as the next version of an adapter; servers watching the registry swap to it."""
    require("server", command="adapters publish")
    from glider.server.adapters.registry import InvalidAdapter
    from glider.trainer.publish import publish_adapter

    s = settings(model=model, adapters=adapters)
    try:
        published = publish_adapter(s.adapters_dir(), role, source, s.model_dir(), stage=stage, keep=keep)
    except (InvalidAdapter, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"{role}: published {published.version}")


@app.command("list")
def adapters_list(
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
):
    """Adapters in the registry, their versions and which one is current."""
    require("server", command="adapters list")
    from glider.server.adapters.registry import AdapterNotFound, AdapterRegistry

    registry = AdapterRegistry(settings(adapters=adapters).adapters_dir())
    table = Table("adapter", "current", "versions", "stage", "rank")
    for name in registry.names():
        try:
            current = registry.get(name)
            cur, stage, rank = current.version, current.manifest.get("stage"), current.manifest.get("rank")
        except AdapterNotFound:
            cur = stage = rank = None
        table.add_row(name, cur or "-", " ".join(registry.versions(name)), str(stage), str(rank))
    console.print(table)


@app.command("prune")
def adapters_prune(
    keep: Annotated[int, typer.Option(help="Versions to keep per adapter (current and its parent always).")] = 5,
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
):
    """Delete old adapter versions."""
    require("server", command="adapters prune")
    from glider.server.adapters.registry import AdapterRegistry

    registry = AdapterRegistry(settings(adapters=adapters).adapters_dir())
    for name in registry.names():
        removed = registry.prune(name, keep)
        console.print(f"{name}: removed {' '.join(removed) or 'nothing'}")
