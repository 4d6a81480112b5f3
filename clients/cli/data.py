"""``glider data ...``: expert trajectories (gold paths replayed in the environments) and GLIDER's
hierarchical datasets D^h / D^l built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from glider.clients.cli._common import console, require, settings, split_list
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Expert trajectories and the hierarchical datasets.")



def expert_root(data: Path | None) -> Path:
    return data if data is not None else settings().home / "data" / "expert"


def perturbed_root(out: Path | None) -> Path:
    return out if out is not None else settings().home / "data" / "perturbed"


def medium_root(out: Path | None) -> Path:
    return out if out is not None else settings().home / "data" / "medium"


def per_task_or_recipe(per_task: int | None, recipe: str | None):
    """--per-task N, or a recipe's per-family counts."""
    if recipe is None:
        return per_task
    from glider.trainer.data.collect import recipe_counts

    try:
        return recipe_counts(recipe)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--recipe") from None


def trajectories(data: Path | None, tasks: str, per_task, logs: Path | None = None,
                  env: str = "scienceworld", perturbed: Path | None = None, medium: Path | None = None,
                  profile: str | None = None):
    """Collected expert trajectories (plus perturbed replays, medium-policy episodes and converted server
    logs, of agent ``profile``'s episodes when given); exits with a clear error when none."""
    from glider.trainer.data.collect import load_collected
    from glider.trainer.data.logs import trajectories_from_logs

    families = split_list(tasks) or None
    trajs = load_collected(expert_root(data), env, "train", families, per_task)
    if perturbed is not None:
        trajs += load_collected(perturbed, env, "train", families, per_task)
    if medium is not None:
        from glider.trainer.medium import load_medium

        trajs += [t for t in load_medium(medium) if families is None or t.task_name in families]
    if logs is not None:
        trajs += trajectories_from_logs(logs, profile=profile)
    if not trajs:
        console.print("[red]error:[/red] no trajectories found (run `glider data collect` first)")
        raise typer.Exit(2)
    return trajs


@app.command("medium")
def data_medium(
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache (<home>/data/expert).")] = None,
    recipe: Annotated[str | None, typer.Option(help="glider: the paper's per-family counts instead of "
                                                    "--per-task.")] = None,
    per_task: Annotated[int | None, typer.Option(help="Expert trajectories per family to halve.")] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated task families (default: all collected).")] = "",
    minutes: Annotated[float, typer.Option(help="Time box of the medium policy's SFT.")] = 9.0,
    seeds: Annotated[str, typer.Option(help="One sampled episode per played variation and seed.")] = "0,1",
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the played episodes.")] = 0.7,
    max_steps: Annotated[int, typer.Option(help="Step cap of a played episode.")] = 50,
    parallel: Annotated[int | None, typer.Option(help="Episodes in flight (default: as memory allows).")] = None,
    backend: Annotated[str, typer.Option(help="vllm | hf")] = "vllm",
    out: Annotated[Path | None, typer.Option(help="Policy, recorded episodes, medium.jsonl "
                                                  "(<home>/data/medium).")] = None,
):
    """Medium-quality data for ORL: SFT on half the train variations, sampled play of the other half through
    a real server (resumable); the recorded episodes land in <out>/medium.jsonl."""
    require("train", "server", "envs", command="data medium")
    import dataclasses
    import time

    from glider.trainer.medium import MediumConfig, collect_medium

    try:
        seed_list = tuple(int(x) for x in split_list(seeds))
    except ValueError:
        raise typer.BadParameter("comma-separated integers", param_hint="--seeds") from None
    if not seed_list:
        raise typer.BadParameter("at least one seed", param_hint="--seeds")
    if temperature < 0:
        raise typer.BadParameter("0 (greedy) or more", param_hint="--temperature")
    if backend not in ("vllm", "hf"):
        raise typer.BadParameter("vllm | hf", param_hint="--backend")
    s = settings()
    trajs = trajectories(data, tasks, per_task_or_recipe(per_task, recipe))
    mode = getattr(s.mode, "value", s.mode)
    defaults = MediumConfig()
    cfg = MediumConfig(mode=mode, sft=dataclasses.replace(defaults.sft, max_minutes=minutes), seeds=seed_list,
                       temperature=temperature, max_steps=max_steps, parallel=parallel, backend=backend,
                       c_max=s.c_max)
    started = time.monotonic()
    try:
        report = collect_medium(s.model_dir(), trajs, medium_root(out), cfg, say=console.rule)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"medium policy trained on {report.trained_on} trajectories played {report.played_variations} "
                  f"variations: {report.episodes} episodes, mean score {100 * report.mean_score:.1f}, in "
                  f"{time.monotonic() - started:.0f}s -> {report.path}")


@app.command("collect")
def data_collect(
    env: Annotated[str, typer.Option(help="scienceworld | textworld")] = "scienceworld",
    split: Annotated[str, typer.Option(help="train | dev | test")] = "train",
    per_task: Annotated[int, typer.Option(help="Variations (TextWorld: games) per task family, spread over "
                                               "the split.")] = 5,
    recipe: Annotated[str | None, typer.Option(help="glider: the paper's per-family counts (GLIDER's "
                                                    "task_nums.csv train column, 1,284 trajectories over 23 "
                                                    "families) instead of --per-task.")] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated task families (default: all; "
                                            "TextWorld: tw-cooking).")] = "",
    workers: Annotated[int, typer.Option(help="Environment processes at once.")] = 2,
    max_steps: int = 100,
    offset: Annotated[int, typer.Option(help="Skip the split's first OFFSET variations.")] = 0,
    perturb: Annotated[float, typer.Option(help="ε: take a random valid action before a gold one with this "
                                                "probability (suboptimal data for ORL; ScienceWorld).")] = 0.0,
    out: Annotated[Path | None, typer.Option(help="Root of the trajectory cache (<home>/data/expert; with "
                                                  "--perturb, <home>/data/perturbed).")] = None,
):
    """Replay gold action sequences and cache every step on disk (resumable); --perturb for suboptimal replays."""
    require("envs", command="data collect")
    import time

    from glider.trainer.data.collect import collect, recipe_counts

    if env not in ("scienceworld", "textworld"):
        raise typer.BadParameter("scienceworld | textworld", param_hint="--env")
    if split not in ("train", "dev", "test"):
        raise typer.BadParameter("train | dev | test", param_hint="--split")
    if not 0.0 <= perturb < 1.0:
        raise typer.BadParameter("a probability in [0, 1)", param_hint="--perturb")
    root = perturbed_root(out) if perturb else expert_root(out)
    if recipe is not None:
        try:
            per_task = recipe_counts(recipe)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--recipe") from None
    started = time.monotonic()
    counts = collect(root, env=env, split=split, tasks=split_list(tasks) or None, per_task=per_task,
                     workers=workers, max_steps=max_steps, offset=offset, games_dir=settings().home / "games",
                     perturb=perturb)
    size = sum(f.stat().st_size for f in (root / env / split).rglob("*.json"))
    console.print(f"{env} {split}: played {counts.played} ({counts.steps} steps) in "
                  f"{time.monotonic() - started:.0f}s, {counts.cached} cached; cache {size / 2**20:.1f} MiB "
                  f"-> {root / env / split}")


def annotator_for(annotator: str, llm_url: str | None, llm_model: str | None):
    from glider.trainer.data.hierarchy import LLMAnnotator, TemplateAnnotator

    if annotator == "template":
        return TemplateAnnotator()
    if annotator == "llm":
        if not llm_url or not llm_model:
            raise typer.BadParameter("--annotator llm needs --llm-url and --llm-model")
        return LLMAnnotator(llm_url, llm_model)
    raise typer.BadParameter("template | llm", param_hint="--annotator")


@app.command("build")
def data_build(
    out: Annotated[Path, typer.Option(help="Output directory for <split>/{trajectories,dh,dl,flat}.jsonl.")],
    source: Annotated[Path | None, typer.Option(help="Expert trajectory cache (<home>/data/expert).")] = None,
    logs: Annotated[Path | None, typer.Option(help="Server episode-log directory to convert instead.")] = None,
    env: str = "scienceworld",
    tasks: str = "",
    per_task: Annotated[int | None, typer.Option(help="N trajectories per task family (the spread the collection took).")] = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    segmentation: Annotated[str, typer.Option(help="auto (events for expert data, recorded for server logs) | events | score | recorded | fixed")] = "auto",
    min_len: int = 2,
    max_len: Annotated[int, typer.Option(help="Longest segment (the server's c_max).")] = 10,
    annotator: Annotated[str, typer.Option(help="template | llm")] = "template",
    llm_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://host:8001/v1")]
    = None,
    llm_model: str | None = None,
):
    """Segment trajectories into subgoals and write D^h, D^l and the flat dataset, split by variation."""
    require("train", command="data build")
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
        trajs = trajectories(source, tasks, per_task, env=env)
    seg = SegmentationConfig(method=segmentation, min_len=min_len, max_len=max_len)
    ann = annotator_for(annotator, llm_url, llm_model)
    train, val = split_by_group(trajs, val_fraction, seed)
    episodes = {"train": [annotate(t, ann, seg) for t in train], "validation": [annotate(t, ann, seg) for t in val]}
    counts = write_datasets(out, episodes)
    table = Table("split", *counts["train"].keys())
    for split, c in counts.items():
        table.add_row(split, *(str(v) for v in c.values()))
    console.print(table)


