"""The ``glider`` command line.

    glider backbone build --out DIR     build the embedded tiny backbone (tokenizer + Llama)
    glider adapters init                write untrained LoRA adapters for every role into the registry
    glider serve                        run the agent server (REST)
    glider demo                         all of the above if missing, then play one ScienceWorld episode

Every option of ``serve`` is also a ``GLIDER_*`` environment variable
(``glider.server.settings.Settings``); a flag given on the command line wins.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from glider.clients.commands_eval import eval_app
from glider.clients.commands_train import data_app, train_app
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="GLIDER: hierarchical LLM agents.")
backbone_app = typer.Typer(no_args_is_help=True, help="The embedded tiny backbone.")
adapters_app = typer.Typer(no_args_is_help=True, help="LoRA adapters in the registry.")
app.add_typer(backbone_app, name="backbone")
app.add_typer(adapters_app, name="adapters")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
console = Console()
app.add_typer(eval_app, name="eval")

ALL_ADAPTERS = ["planner", "executor", "shared", "flat"]


def _settings(**overrides):
    from glider.server.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@backbone_app.command("build")
def backbone_build(
    out: Annotated[Path | None, typer.Option(help="Output directory (default: <home>/backbone).")] = None,
    seed: int = 0,
    vocab_size: int = 4096,
    layers: int = 4,
    hidden: int = 256,
    variations_per_task: int = 1,
    tasks: Annotated[str, typer.Option(help="Comma-separated task families (default: all).")] = "",
    workers: int = 2,
    force: bool = False,
):
    """Build the embedded backbone from ScienceWorld text, deterministically from SEED."""
    from glider.trainer.backbone import BackboneConfig, build_backbone, is_backbone

    _logging()
    out = out or _settings().home / "backbone"
    if is_backbone(out) and not force:
        console.print(f"backbone already at {out} (use --force to rebuild)")
        return
    cfg = BackboneConfig(seed=seed, vocab_size=vocab_size, num_layers=layers, hidden_size=hidden,
                         variations_per_task=variations_per_task, workers=workers,
                         tasks=[t for t in tasks.split(",") if t])
    build_backbone(out, cfg)
    console.print(f"backbone written to {out}")


@adapters_app.command("init")
def adapters_init(
    model: Annotated[Path | None, typer.Option(help="Backbone directory (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
    names: Annotated[str, typer.Option(help="Adapters to create.")] = ",".join(ALL_ADAPTERS),
    rank: int = 8,
    force: bool = False,
):
    """Publish an untrained LoRA adapter for each role that has none for this backbone.

    A server always starts with real adapters loaded; after a backbone rebuild the
    old adapters no longer fit it, and a fresh version is published.
    """
    from glider.server.adapters.registry import (
        AdapterNotFound,
        AdapterRegistry,
        base_model_identity,
    )
    from glider.trainer.lora import LoraSettings, create_adapter
    from glider.trainer.publish import publish_adapter

    _logging()
    s = _settings(model=model, adapters=adapters)
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
            create_adapter(s.model_dir(), Path(tmp), LoraSettings(r=rank, alpha=2 * rank))
            published = publish_adapter(s.adapters_dir(), name, Path(tmp), s.model_dir(), stage="init")
        console.print(f"{name}: published {published.version} at {published.path}")


@adapters_app.command("publish")
def adapters_publish(
    source: Annotated[Path, typer.Argument(help="A peft adapter directory.")],
    role: Annotated[str, typer.Option("--role", "--name", help="Adapter name: planner, executor, ...")],
    model: Annotated[Path | None, typer.Option(help="Backbone it was trained on (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
    stage: str = "manual",
    keep: Annotated[int | None, typer.Option(help="Prune to this many versions afterwards.")] = None,
):
    """Publish SOURCE as the next version of an adapter; servers watching the registry swap to it."""
    from glider.server.adapters.registry import InvalidAdapter
    from glider.trainer.publish import publish_adapter

    s = _settings(model=model, adapters=adapters)
    try:
        published = publish_adapter(s.adapters_dir(), role, source, s.model_dir(), stage=stage, keep=keep)
    except (InvalidAdapter, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"{role}: published {published.version}")


@adapters_app.command("list")
def adapters_list(
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
):
    """Adapters in the registry, their versions and which one is current."""
    from glider.server.adapters.registry import AdapterNotFound, AdapterRegistry

    registry = AdapterRegistry(_settings(adapters=adapters).adapters_dir())
    table = Table("adapter", "current", "versions", "stage", "rank")
    for name in registry.names():
        try:
            current = registry.get(name)
            cur, stage, rank = current.version, current.manifest.get("stage"), current.manifest.get("rank")
        except AdapterNotFound:
            cur = stage = rank = None
        table.add_row(name, cur or "-", " ".join(registry.versions(name)), str(stage), str(rank))
    console.print(table)


@adapters_app.command("prune")
def adapters_prune(
    keep: Annotated[int, typer.Option(help="Versions to keep per adapter (current and its parent always).")] = 5,
    adapters: Annotated[Path | None, typer.Option(help="Registry root (GLIDER_ADAPTERS).")] = None,
):
    """Delete old adapter versions."""
    from glider.server.adapters.registry import AdapterRegistry

    registry = AdapterRegistry(_settings(adapters=adapters).adapters_dir())
    for name in registry.names():
        removed = registry.prune(name, keep)
        console.print(f"{name}: removed {' '.join(removed) or 'nothing'}")


@app.command()
def serve(
    model: Annotated[Path | None, typer.Option(help="HF model directory (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Adapter registry (GLIDER_ADAPTERS).")] = None,
    backend: Annotated[str | None, typer.Option(help="vllm | hf (GLIDER_BACKEND).")] = None,
    mode: Annotated[str | None, typer.Option(help="separate | shared | flat (GLIDER_MODE).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (GLIDER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (GLIDER_PORT).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (GLIDER_GRPC_PORT).")] = None,
):
    """Serve the hierarchical agent over REST and gRPC."""
    from glider.server.app import serve as run

    s = _settings(model=model, adapters=adapters, backend=backend, mode=mode, host=host, port=port,
                  grpc_port=grpc_port)
    _logging(s.log_level)
    raise typer.Exit(run(s))


@app.command()
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
):
    """Play episodes through a running server and print a summary per task."""
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
                                games_dir=_settings().home / "games",
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


@app.command()
def demo(
    task: str = "find-plant",
    variation: int = 0,
    max_steps: int = 30,
    backend: str = "vllm",
    port: int = 8765,
    protocol: Annotated[str, typer.Option(help="The closing table's evaluation plan (quick: one episode per "
                                               "family and split of GLIDER's protocol; '' skips it).")] = "quick",
    parallel: Annotated[int, typer.Option(help="Episodes in flight for the table.")] = 8,
    train: Annotated[bool, typer.Option(help="Train SFT adapters first when they are missing.")] = True,
):
    """Build and train what is missing, start a server, play ScienceWorld through /act, print the table.

    The first run builds the backbone, collects expert data, warms the backbone up
    and trains the SFT adapters (``glider.trainer.pipeline``, ~20 minutes on 2
    cores); later runs reuse all of it.
    """
    from glider.clients.envs.scienceworld import ScienceWorld
    from glider.clients.evaluate import EvalConfig, run_episodes, write_report
    from glider.clients.play import play_episode
    from glider.clients.protocols import load_plan
    from glider.clients.sdk import GliderClient

    _logging("warning")
    s = _settings()
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
    grpc_port = _free_port()
    env = dict(os.environ, GLIDER_BACKEND=backend, GLIDER_PORT=str(port), GLIDER_HOST="127.0.0.1",
               GLIDER_GRPC_PORT=str(grpc_port))
    server = subprocess.Popen([sys.executable, "-m", "glider.clients.cli", "serve"], env=env)
    try:
        client = GliderClient(f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        health = _wait(client, server)
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
            cfg = EvalConfig(plan=plan, server=f"http://127.0.0.1:{port}", transport="rest", parallel=parallel)
            out = s.home / "eval" / f"demo-{protocol}-{health.mode}-{_adapter_tag(health.adapters)}"
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


def _adapter_tag(adapters: dict[str, str]) -> str:
    """A run directory per set of served adapter versions: a retrained agent is a new run, not a resume."""
    return "_".join(f"{name}-{version}" for name, version in sorted(adapters.items()))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(client, server, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise typer.Exit(f"server exited with {server.returncode}")
        health = client.ready()
        if health is not None:
            return health
        time.sleep(0.5)
    raise typer.Exit("server did not become ready")


if __name__ == "__main__":
    app()
