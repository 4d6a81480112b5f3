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


def perturbed_root(out: Path | None) -> Path:
    return out if out is not None else _settings().home / "data" / "perturbed"


def _per_task(per_task: int | None, recipe: str | None):
    """--per-task N, or a recipe's per-family counts."""
    if recipe is None:
        return per_task
    from glider.trainer.data.collect import recipe_counts

    try:
        return recipe_counts(recipe)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--recipe") from None


def _trajectories(data: Path | None, tasks: str, per_task, logs: Path | None = None,
                  env: str = "scienceworld", perturbed: Path | None = None):
    """Collected expert trajectories (plus perturbed replays and converted server logs); exits with a
    clear error when none."""
    from glider.trainer.data.collect import load_collected
    from glider.trainer.data.logs import trajectories_from_logs

    trajs = load_collected(expert_root(data), env, "train", _tasks(tasks) or None, per_task)
    if perturbed is not None:
        trajs += load_collected(perturbed, env, "train", _tasks(tasks) or None, per_task)
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
    counts = collect(root, env=env, split=split, tasks=_tasks(tasks) or None, per_task=per_task,
                     workers=workers, max_steps=max_steps, offset=offset, games_dir=_settings().home / "games",
                     perturb=perturb)
    size = sum(f.stat().st_size for f in (root / env / split).rglob("*.json"))
    console.print(f"{env} {split}: played {counts['played']} ({counts['steps']} steps) in "
                  f"{time.monotonic() - started:.0f}s, {counts['cached']} cached; cache {size / 2**20:.1f} MiB "
                  f"-> {root / env / split}")


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


def _train_config(epochs, lr, batch_tokens, grad_accum, max_minutes, seed, max_steps, **extra):
    from glider.trainer.training import TrainConfig

    return TrainConfig(lr=lr, epochs=epochs, batch_tokens=batch_tokens, grad_accum=grad_accum,
                       max_minutes=max_minutes, seed=seed, max_steps=max_steps, **extra)


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
    recipe: Annotated[str | None, typer.Option(help="glider: the paper's per-family counts of the collected "
                                                    "data (instead of --per-task).")] = None,
    epochs: Annotated[float, typer.Option(help="At most this many epochs (early stopping usually ends first).")]
    = 30.0,
    lr: float = 2e-3,
    rank: int = 16,
    batch_tokens: int = 2048,
    grad_accum: int = 1,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    patience: Annotated[int, typer.Option(help="Stop after this many held-out measurements without a new best "
                                               "(0: train the whole budget); ends on the best weights.")] = 4,
    eval_every: Annotated[int, typer.Option(help="Measure the held-out loss every N optimizer steps.")] = 50,
    val_fraction: Annotated[float, typer.Option(help="Share of train variations held out for early stopping.")]
    = 0.1,
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
    trajs = _trajectories(data, tasks, _per_task(per_task, recipe), logs)
    lora = sft_lora()
    lora.r, lora.alpha = rank, 2 * rank
    cfg = SFTConfig(mode=mode, lora=lora, val_fraction=val_fraction, split_seed=seed,
                    segmentation=SegmentationConfig(max_len=s.c_max),
                    train=_train_config(epochs, lr, batch_tokens, grad_accum, max_minutes, seed, max_steps,
                                        patience=patience or None, eval_every=eval_every))
    hierarchy = HierarchyConfig.from_settings(s.model_copy(update={"mode": mode}))
    metrics = run_sft(s.model_dir(), trajs, out or s.home / "runs" / f"sft-{mode}", cfg, hierarchy=hierarchy,
                      registry=s.adapters_dir() if publish else None,
                      annotator=_annotator(annotator, llm_url, llm_model))
    table = Table("adapter", "tokens", "padding", "tokens/s", "steps (epochs)", "best step", "loss first→last",
                  "val loss before→after", "minutes", "published")
    for name, m in metrics["adapters"].items():
        table.add_row(name, str(m["tokens"]), f"{100 * m['padding_share']:.1f}%", f"{m['tokens_per_s']:.0f}",
                      f"{m['steps']} ({m['epochs_done']:.1f})", str(m.get("best_step")),
                      f"{m['first_loss']:.3f}→{m['train_loss']:.3f}",
                      f"{m['val_loss_before']:.3f}→{m['val_loss_after']:.3f}", f"{m['seconds'] / 60:.1f}",
                      m.get("published", "-"))
    console.print(table)


@train_app.command("orl")
def train_orl(
    shared: Annotated[bool, typer.Option("--shared", help="One adapter for both roles.")] = False,
    flat: Annotated[bool, typer.Option("--flat", help="The no-hierarchy baseline.")] = False,
    init: Annotated[str, typer.Option(help="sft: start from the registry's SFT adapters | scratch: a fresh "
                                           "LoRA (the ORL-only ablation).")] = "sft",
    model: Annotated[Path | None, typer.Option(help="Backbone (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry (GLIDER_ADAPTERS).")] = None,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    perturbed: Annotated[Path | None, typer.Option(help="Perturbed replays (`glider data collect --perturb`; "
                                                        "default <home>/data/perturbed if it exists).")] = None,
    logs: Annotated[Path | None, typer.Option(help="Server episode logs (the SFT agent's own episodes).")] = None,
    tasks: str = "",
    per_task: int | None = None,
    expectile: Annotated[float, typer.Option(help="τ of the V loss.")] = 0.9,
    lam: Annotated[float, typer.Option(help="λ of exp(A/λ).")] = 0.1,
    max_weight: Annotated[float, typer.Option(help="Clip of exp(A/λ).")] = 20.0,
    gamma: float = 0.99,
    polyak: float = 0.05,
    critic_steps: int = 1500,
    critic_lr: float = 3e-4,
    epochs: float = 2.0,
    lr: Annotated[float, typer.Option(help="Actor learning rate.")] = 5e-4,
    batch_tokens: int = 8192,
    grad_accum: int = 1,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    publish: Annotated[bool, typer.Option(help="Publish to the registry when done.")] = True,
    out: Annotated[Path | None, typer.Option(help="Checkpoints, critics, adapters (<home>/runs/orl-<mode>).")]
    = None,
):
    """Offline RL: Q/V critic (TD + expectile) and advantage-weighted actor, per level, on expert + suboptimal data."""
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.critic import CriticConfig
    from glider.trainer.data.hierarchy import SegmentationConfig
    from glider.trainer.orl import ORLConfig, run_orl

    if shared and flat:
        raise typer.BadParameter("--shared and --flat exclude each other")
    if init not in ("sft", "scratch"):
        raise typer.BadParameter("sft | scratch", param_hint="--init")
    mode = "shared" if shared else "flat" if flat else "separate"
    s = _settings(model=model, adapters=adapters)
    if perturbed is None and perturbed_root(None).is_dir():
        perturbed = perturbed_root(None)
    trajs = _trajectories(data, tasks, per_task, logs, perturbed=perturbed)
    cfg = ORLConfig(mode=mode, init=init, segmentation=SegmentationConfig(max_len=s.c_max),
                    critic=CriticConfig(expectile=expectile, lam=lam, max_weight=max_weight, gamma=gamma,
                                        polyak=polyak, steps=critic_steps, lr=critic_lr, seed=seed),
                    actor=_train_config(epochs, lr, batch_tokens, grad_accum, max_minutes, seed, max_steps))
    hierarchy = HierarchyConfig.from_settings(s.model_copy(update={"mode": mode}))
    metrics = run_orl(s.model_dir(), trajs, out or s.home / "runs" / f"orl-{mode}", cfg, hierarchy=hierarchy,
                      registry=s.adapters_dir(), publish=publish)
    console.print(f"trajectories by source: {metrics['trajectories']}")
    table = Table("adapter", "role", "decisions", "critic loss", "advantage", "weights min/max", "actor loss",
                  "published")
    for name, m in metrics["adapters"].items():
        for role, r in m["roles"].items():
            table.add_row(name, role, str(r["decisions"]),
                          " ".join(f"{k}={v:.4f}" for k, v in r["critic_loss"].items()),
                          f"{r.get('advantage_mean', 0):.3f}±{r.get('advantage_std', 0):.3f}",
                          f"{r.get('weight_min', 0):.2f}/{r.get('weight_max', 0):.2f}",
                          f"{m['first_loss']:.3f}→{m['train_loss']:.3f}", m.get("published", "-"))
    console.print(table)


@train_app.command("o2o")
def train_o2o(
    server: Annotated[str, typer.Option(help="The serving server's REST address.")] = "http://127.0.0.1:8000",
    method: Annotated[str, typer.Option(help="glider | awac | ac")] = "glider",
    tasks: Annotated[str, typer.Option(help="Online (held-out) task families, comma-separated.")] = "find-plant",
    split: Annotated[str, typer.Option(help="Whose variations are played online.")] = "train",
    iterations: int = 6,
    episodes: Annotated[int, typer.Option(help="Episodes played per iteration.")] = 4,
    max_steps: int = 30,
    fifo: Annotated[int, typer.Option(help="Online episodes kept for the updates.")] = 32,
    updates_per_episode: int = 16,
    critic_steps: int = 300,
    adapt_executor: Annotated[bool, typer.Option(help="Also adapt the executor (the paper adapts the planner).")]
    = False,
    actor_lr: float = 1e-4,
    offline: Annotated[bool, typer.Option(help="Interleave the expert data (--data) with the online episodes.")]
    = True,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    offline_tasks: Annotated[str, typer.Option(help="Offline task families (default: all but --tasks).")] = "",
    per_task: int | None = 3,
    parallel: int = 2,
    model: Annotated[Path | None, typer.Option(help="Backbone (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="The registry the server watches (GLIDER_ADAPTERS).")]
    = None,
    records: Annotated[Path | None, typer.Option(help="The server's episode logs (GLIDER_RECORD_DIR).")] = None,
    out: Annotated[Path | None, typer.Option(help="Adapters per iteration and curve.json.")] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server's /readyz.")] = 1800.0,
    leader_lock: Annotated[bool, typer.Option(
        help="Train only while holding the trainer lock in GLIDER_REDIS_URL (one trainer per deployment; "
             "the others wait to take over).")] = False,
    seed: int = 0,
):
    """Offline-to-online: play through the server, learn from what it recorded, publish, hot-swap, repeat.

    --iterations 0 runs until stopped (the trainer sidecar)."""
    from glider.clients.envs.scienceworld import TASK_FAMILIES
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.critic import CriticConfig
    from glider.trainer.o2o import O2OConfig, OnlineLearner, area_under_curve, run_o2o

    if method not in ("glider", "awac", "ac"):
        raise typer.BadParameter("glider | awac | ac", param_hint="--method")
    online = _tasks(tasks)
    unknown = [t for t in online if t not in TASK_FAMILIES]
    if not online or unknown:
        raise typer.BadParameter(f"unknown task families {unknown}" if unknown else "at least one",
                                 param_hint="--tasks")
    if iterations < 0:
        raise typer.BadParameter("0 (until stopped) or more", param_hint="--iterations")
    s = _settings(model=model, adapters=adapters)
    mode = getattr(s.mode, "value", s.mode)
    offline_trajs = []
    if offline:
        keep = _tasks(offline_tasks) or [t for t in TASK_FAMILIES if t not in online]
        offline_trajs = _trajectories(data, ",".join(keep), per_task)
    cfg = O2OConfig(method=method, tasks=online, split=split, iterations=iterations, episodes_per_iteration=episodes,
                    max_steps=max_steps, fifo_episodes=fifo, updates_per_episode=updates_per_episode,
                    critic_steps=critic_steps, adapt_executor=adapt_executor, actor_lr=actor_lr,
                    critic=CriticConfig(seed=seed), parallel=parallel, seed=seed)
    table = Table("iteration", "episodes", "score", "published", "play s", "train s", "swap s")

    def show(point: dict) -> None:
        console.print(f"iteration {point['iteration']}: score {100 * point['score']:.1f} -> {point['versions']}")
        table.add_row(str(point["iteration"]), str(point["episodes"]), f"{100 * point['score']:.1f}",
                      " ".join(f"{k}@{v}" for k, v in point["versions"].items()), f"{point['play_s']:.0f}",
                      f"{point['train_s']:.0f}", f"{point['swap_s']:.1f}")

    from glider.clients.sdk import GliderClient
    from glider.trainer.leader import LeaderLock, LeadershipLost

    lock = LeaderLock(s.redis_url.get_secret_value(), prefix=s.redis_prefix) if leader_lock else None
    if lock is not None:  # before loading the model: a waiting replica holds no memory
        lock.acquire()
    try:
        learner = OnlineLearner(s.model_dir(), s.adapters_dir(), cfg, mode=mode, offline=offline_trajs,
                                hierarchy=HierarchyConfig.from_settings(s), out_dir=out)
        with GliderClient(server) as client:  # a sidecar starts beside a server that is still loading
            client.wait_ready(timeout=ready_timeout)
        curve = run_o2o(server, records or s.episodes_dir(), learner, games_dir=s.home / "games",
                        on_iteration=show, before_publish=lock.check if lock else None)
    except LeadershipLost as exc:
        console.print(f"[red]stopped before publishing: {exc}[/red]")
        raise typer.Exit(3) from None
    finally:
        if lock is not None:
            lock.close()
    console.print(table)
    console.print(f"area under the curve ({method}): {area_under_curve(curve):.2f}")
