"""``glider data ...`` and ``glider train ...``: expert data, hierarchical datasets, warm-up and SFT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(no_args_is_help=True, help="Expert trajectories and the hierarchical datasets.")
train_app = typer.Typer(no_args_is_help=True, help="Training stages (the trainer sidecar).")
console = Console()


def _settings(**overrides):
    from glider.server.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _tasks(spec: str) -> list[str]:
    return [t for t in spec.split(",") if t]


def expert_root(data: Path | None) -> Path:
    return data if data is not None else _settings().home / "data" / "expert"


def _trajectories(data: Path | None, tasks: str, per_task: int | None, logs: Path | None = None,
                  env: str = "scienceworld"):
    """Collected expert trajectories (plus converted server logs); exits with a clear error when none."""
    from glider.trainer.data.collect import load_collected
    from glider.trainer.data.logs import trajectories_from_logs

    trajs = load_collected(expert_root(data), env, "train", _tasks(tasks) or None, per_task)
    if logs is not None:
        trajs += trajectories_from_logs(logs)
    if not trajs:
        console.print("[red]error:[/red] no trajectories found (run `glider data collect` first)")
        raise typer.Exit(2)
    return trajs


@data_app.command("collect")
def data_collect(
    env: Annotated[str, typer.Option(help="scienceworld | textworld")] = "scienceworld",
    split: Annotated[str, typer.Option(help="train | dev | test")] = "train",
    per_task: Annotated[int, typer.Option(help="Variations (TextWorld: games) per task family.")] = 5,
    tasks: Annotated[str, typer.Option(help="Comma-separated task families (default: all; "
                                            "TextWorld: tw-cooking).")] = "",
    workers: Annotated[int, typer.Option(help="Environment processes at once.")] = 2,
    max_steps: int = 100,
    offset: Annotated[int, typer.Option(help="Skip the split's first OFFSET variations.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Root of the trajectory cache (<home>/data/expert).")] = None,
):
    """Replay gold action sequences and cache every step on disk (resumable)."""
    from glider.trainer.data.collect import collect

    if env not in ("scienceworld", "textworld"):
        raise typer.BadParameter("scienceworld | textworld", param_hint="--env")
    if split not in ("train", "dev", "test"):
        raise typer.BadParameter("train | dev | test", param_hint="--split")
    root = expert_root(out)
    counts = collect(root, env=env, split=split, tasks=_tasks(tasks) or None, per_task=per_task,
                     workers=workers, max_steps=max_steps, offset=offset, games_dir=_settings().home / "games")
    console.print(f"{env} {split}: played {counts['played']} ({counts['steps']} steps), "
                  f"{counts['cached']} cached -> {root / env / split}")


def _annotator(annotator: str, llm_url: str | None, llm_model: str | None):
    from glider.trainer.data.hierarchy import LLMAnnotator, TemplateAnnotator

    if annotator == "template":
        return TemplateAnnotator()
    if annotator == "llm":
        if not llm_url or not llm_model:
            raise typer.BadParameter("--annotator llm needs --llm-url and --llm-model")
        return LLMAnnotator(llm_url, llm_model)
    raise typer.BadParameter("template | llm", param_hint="--annotator")


@data_app.command("build")
def data_build(
    out: Annotated[Path, typer.Option(help="Output directory for <split>/{trajectories,dh,dl,flat}.jsonl.")],
    source: Annotated[Path | None, typer.Option(help="Expert trajectory cache (<home>/data/expert).")] = None,
    logs: Annotated[Path | None, typer.Option(help="Server episode-log directory to convert instead.")] = None,
    env: str = "scienceworld",
    tasks: str = "",
    per_task: Annotated[int | None, typer.Option(help="First N trajectories per task family.")] = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    segmentation: Annotated[str, typer.Option(help="auto | score | recorded | fixed")] = "auto",
    min_len: int = 2,
    max_len: Annotated[int, typer.Option(help="Longest segment (the server's c_max).")] = 10,
    annotator: Annotated[str, typer.Option(help="template | llm")] = "template",
    llm_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://host:8001/v1")]
    = None,
    llm_model: str | None = None,
):
    """Segment trajectories into subgoals and write D^h, D^l and the flat dataset, split by variation."""
    from glider.trainer.data.hierarchy import (
        SegmentationConfig,
        annotate,
        split_by_group,
        write_datasets,
    )
    from glider.trainer.data.logs import trajectories_from_logs

    if logs is not None:
        trajs = trajectories_from_logs(logs)
        if not trajs:
            console.print(f"[red]error:[/red] no episodes in {logs}")
            raise typer.Exit(2)
    else:
        trajs = _trajectories(source, tasks, per_task, env=env)
    seg = SegmentationConfig(method=segmentation, min_len=min_len, max_len=max_len)
    ann = _annotator(annotator, llm_url, llm_model)
    train, val = split_by_group(trajs, val_fraction, seed)
    episodes = {"train": [annotate(t, ann, seg) for t in train], "validation": [annotate(t, ann, seg) for t in val]}
    counts = write_datasets(out, episodes)
    table = Table("split", *counts["train"].keys())
    for split, c in counts.items():
        table.add_row(split, *(str(v) for v in c.values()))
    console.print(table)


def _train_config(epochs, lr, batch_tokens, grad_accum, max_minutes, seed, max_steps):
    from glider.trainer.training import TrainConfig

    return TrainConfig(lr=lr, epochs=epochs, batch_tokens=batch_tokens, grad_accum=grad_accum,
                       max_minutes=max_minutes, seed=seed, max_steps=max_steps)


@train_app.command("warmup")
def train_warmup(
    model: Annotated[Path | None, typer.Option(help="The embedded backbone (GLIDER_MODEL).")] = None,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    tasks: str = "",
    per_task: int | None = None,
    epochs: float = 4.0,
    lr: float = 1e-3,
    batch_tokens: int = 8192,
    grad_accum: int = 1,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="Checkpoints and logs (<home>/runs/warmup).")] = None,
):
    """Pre-train the embedded tiny backbone on environment transcripts (real backbones skip this)."""
    from glider.trainer.warmup import warmup_backbone

    s = _settings(model=model)
    trajs = _trajectories(data, tasks, per_task)
    cfg = _train_config(epochs, lr, batch_tokens, grad_accum, max_minutes, seed, max_steps)
    info = warmup_backbone(s.model_dir(), trajs, cfg, out or s.home / "runs" / "warmup")
    console.print_json(json.dumps(info, default=str))


@train_app.command("sft")
def train_sft(
    shared: Annotated[bool, typer.Option("--shared", help="One adapter for both roles (the paper's mode).")]
    = False,
    flat: Annotated[bool, typer.Option("--flat", help="The no-hierarchy baseline.")] = False,
    model: Annotated[Path | None, typer.Option(help="Backbone (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry to publish to (GLIDER_ADAPTERS).")] = None,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    logs: Annotated[Path | None, typer.Option(help="Also train on server episode logs from here.")] = None,
    tasks: str = "",
    per_task: int | None = None,
    epochs: float = 3.0,
    lr: float = 2e-3,
    rank: int = 16,
    batch_tokens: int = 8192,
    grad_accum: int = 1,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    annotator: str = "template",
    llm_url: str | None = None,
    llm_model: str | None = None,
    publish: Annotated[bool, typer.Option(help="Publish to the registry when done.")] = True,
    out: Annotated[Path | None, typer.Option(help="Checkpoints, logs, adapters (<home>/runs/sft-<mode>).")]
    = None,
):
    """Behaviour cloning of the planner and executor (or the shared / flat adapter) with LoRA."""
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.data.hierarchy import SegmentationConfig
    from glider.trainer.sft import SFTConfig, run_sft, sft_lora

    if shared and flat:
        raise typer.BadParameter("--shared and --flat exclude each other")
    mode = "shared" if shared else "flat" if flat else "separate"
    s = _settings(model=model, adapters=adapters)
    trajs = _trajectories(data, tasks, per_task, logs)
    lora = sft_lora()
    lora.r, lora.alpha = rank, 2 * rank
    cfg = SFTConfig(mode=mode, lora=lora, val_fraction=val_fraction, split_seed=seed,
                    segmentation=SegmentationConfig(max_len=s.c_max),
                    train=_train_config(epochs, lr, batch_tokens, grad_accum, max_minutes, seed, max_steps))
    hierarchy = HierarchyConfig.from_settings(s.model_copy(update={"mode": mode}))
    metrics = run_sft(s.model_dir(), trajs, out or s.home / "runs" / f"sft-{mode}", cfg, hierarchy=hierarchy,
                      registry=s.adapters_dir() if publish else None,
                      annotator=_annotator(annotator, llm_url, llm_model))
    table = Table("adapter", "tokens", "padding", "tokens/s", "loss first→last", "val loss before→after",
                  "published")
    for name, m in metrics["adapters"].items():
        table.add_row(name, str(m["tokens"]), f"{100 * m['padding_share']:.1f}%", f"{m['tokens_per_s']:.0f}",
                      f"{m['first_loss']:.3f}→{m['train_loss']:.3f}",
                      f"{m['val_loss_before']:.3f}→{m['val_loss_after']:.3f}", m.get("published", "-"))
    console.print(table)
