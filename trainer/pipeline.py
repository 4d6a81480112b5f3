"""The embedded recipe: from nothing to served SFT adapters, each step cached so a rerun skips it.

    backbone build -> data collect -> backbone warm-up -> SFT (separate adapters) -> publish

A pretrained backbone (``glider backbone import``, or any HF directory ``GLIDER_MODEL`` names) is
neither built nor warmed up: its adapters train on it as it is.

This is what ``glider demo`` (README command a) runs on a 2-core CPU within its
~20-minute budget.  ``Recipe.full()`` is the paper's data (GLIDER's 1,284 train
trajectories) with longer time boxes (45-minute warm-up, 60 minutes of SFT per mode):
hours on 2 cores, in the background (``bench/quality.py --recipe full``), or a GPU
node (the Kubernetes training Job).  Each step is also a CLI command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from glider.trainer.training import TrainConfig

if TYPE_CHECKING:  # the reports' modules import torch-side code: the recipe stays light to import
    from glider.trainer.data.collect import CollectCounts
    from glider.trainer.sft import SFTReport
    from glider.trainer.warmup import WarmupReport

log = logging.getLogger(__name__)


#: task families left out of the embedded recipe: their gold paths are 100+ steps of slow
#: genetics simulation (minutes per trajectory here) and beyond a 50-step episode anyway
SLOW_TASKS = ("mendelian-genetics-known-plant", "mendelian-genetics-unknown-plant")


def recipe_tasks() -> list[str]:
    from glider.clients.envs.scienceworld import TASK_FAMILIES

    return [t for t in TASK_FAMILIES if t not in SLOW_TASKS]


@dataclass
class Recipe:
    """What the embedded agent is trained on and for how long.

    ``demo`` (the default, ``glider demo``): 3 train variations per family spread over the split, a
    4-minute warm-up and SFT to early stopping within 9 minutes, so the whole pipeline fits ~20 minutes on
    2 cores.  ``full``: the paper's data (GLIDER's per-family train counts, 1,284 trajectories over 23
    families), warm-up and SFT to early stopping, each adapter time-boxed to ``sft.max_minutes``.
    Both hold out 10 % of the train variations, on which early stopping is decided (never the plan).
    """

    name: str = "demo"
    per_task: int | dict[str, int] = 3  # train variations per task family (spread over the split)
    tasks: list[str] = field(default_factory=recipe_tasks)
    workers: int = 3
    max_steps: int = 100
    val_fraction: float = 0.1
    warmup: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, epochs=6, max_minutes=4))
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=2e-3, epochs=30, batch_tokens=2048, patience=4, eval_every=40, max_minutes=9))
    mode: str = "separate"
    diagnose_segments: int = 0  # held-out gold segments replayed to measure executor completion

    @classmethod
    def full(cls, sft_minutes: float = 60.0, warmup_minutes: float = 45.0) -> Recipe:
        """The paper's data: GLIDER's per-family train counts (1,284 trajectories over 23 families).

        ``sft_minutes`` boxes a mode's SFT (its adapters share it by data size), ``warmup_minutes`` the
        warm-up; a recipe with other boxes than the defaults is named after them (``full-w10-s20``), so
        its runs and results stay apart from the full-size recipe's."""
        from glider.trainer.data.collect import recipe_counts

        counts = recipe_counts("glider")
        name = "full" if (sft_minutes, warmup_minutes) == (60.0, 45.0) else f"full-w{warmup_minutes:g}-s{sft_minutes:g}"
        return cls(name=name, per_task=counts, tasks=list(counts),
                   warmup=TrainConfig(lr=1e-3, epochs=10, batch_tokens=8192, patience=3, eval_every=100,
                                      max_minutes=warmup_minutes),
                   sft=TrainConfig(lr=2e-3, epochs=30, batch_tokens=2048, patience=4, eval_every=100,
                                   max_minutes=sft_minutes))

    @classmethod
    def named(cls, name: str) -> Recipe:
        if name == "demo":
            return cls()
        if name == "full":
            return cls.full()
        raise ValueError(f"unknown recipe {name!r} (demo | full)")


def full_recipe_variations(train_variations: dict[str, list[int]]) -> tuple[dict[str, list[int]], dict[str, set[int]]]:
    """Per family, the train variations the full recipe collects (spread over the split) and those of
    them it holds out for early stopping: what a tuning plan may use, and how."""
    from glider.trainer.data.collect import recipe_counts, spread
    from glider.trainer.data.hierarchy import is_held_out

    counts = recipe_counts("glider")
    collected = {task: spread(list(vs), counts.get(task, 0)) for task, vs in train_variations.items()}
    held_out = {task: {v for v in vs if is_held_out(f"scienceworld/{task}/train/{v}", Recipe.val_fraction)}
                for task, vs in collected.items()}
    return collected, held_out


def sft_is_current(registry_root: Path, model_dir: Path, names: list[str]) -> bool:
    """Whether every adapter's current version is an SFT (or later) adapter for this exact backbone."""
    from glider.server.adapters.registry import (
        AdapterNotFound,
        AdapterRegistry,
        base_model_identity,
    )

    registry = AdapterRegistry(registry_root)
    base = base_model_identity(model_dir)["config_sha256"]
    for name in names:
        try:
            current = registry.get(name)
        except AdapterNotFound:
            return False
        if current.manifest.get("stage") in (None, "init", "manual") or (
                current.manifest.get("base_model") or {}).get("config_sha256") != base:
            return False
    return True


@dataclass
class PipelineRun:
    """What ``ensure_trained`` did: each step that ran, with its report (None: it was done already)."""
    collected: CollectCounts
    backbone_built: bool = False
    warmup: WarmupReport | None = None
    sft: SFTReport | None = None

    def stages(self) -> list[str]:
        """The steps that ran (collection always runs: it tops the data up and skips what it has)."""
        ran = {"backbone": self.backbone_built, "collect": True, "warmup": self.warmup is not None,
               "sft": self.sft is not None}
        return [name for name, did in ran.items() if did]


def ensure_trained(settings, recipe: Recipe | None = None, *, say=print) -> PipelineRun:
    """Run whatever steps of the recipe are not done yet; returns what each step did."""
    from glider.server.policy.controller import HierarchyConfig
    from glider.server.policy.modes import ADAPTER_ROLES
    from glider.trainer.backbone import build_backbone, is_backbone, is_embedded
    from glider.trainer.data.collect import collect, load_collected
    from glider.trainer.data.hierarchy import SegmentationConfig, split_by_group
    from glider.trainer.sft import SFTConfig, run_sft
    from glider.trainer.warmup import data_key, warmup_backbone, warmup_info

    recipe = recipe or Recipe()
    model_dir, home = settings.model_dir(), settings.home
    built = not is_backbone(model_dir)
    if built:
        say("building the embedded backbone")
        build_backbone(model_dir)
    expert = home / "data" / "expert"
    say(f"expert data: {recipe.per_task} train variations per task family, spread over the split")
    collected = collect(expert, per_task=recipe.per_task, workers=recipe.workers, tasks=recipe.tasks or None,
                        max_steps=recipe.max_steps, games_dir=home / "games")
    done = PipelineRun(collected=collected, backbone_built=built)
    trajs = load_collected(expert, "scienceworld", "train", recipe.tasks or None, recipe.per_task)
    warm = warmup_info(model_dir)
    if not is_embedded(model_dir):
        say(f"pretrained backbone {model_dir.name}: no warm-up, its adapters train on it as it is")
    elif warm is None or warm.get("data") != data_key(trajs):
        say(f"backbone warm-up on {len(trajs)} transcripts")
        train_trajs, held_out = split_by_group(trajs, recipe.val_fraction)
        done.warmup = warmup_backbone(model_dir, train_trajs, recipe.warmup, home / "runs" / "warmup",
                                      held_out=held_out)
    names = list(ADAPTER_ROLES[recipe.mode])
    if not sft_is_current(settings.adapters_dir(), model_dir, names):
        say(f"SFT ({recipe.mode}) on {len(trajs)} trajectories")
        cfg = SFTConfig(mode=recipe.mode, train=recipe.sft, val_fraction=recipe.val_fraction,
                        segmentation=SegmentationConfig(max_len=settings.c_max),
                        diagnose_segments=recipe.diagnose_segments)
        hierarchy = HierarchyConfig.from_settings(settings.model_copy(update={"mode": recipe.mode}))
        done.sft = run_sft(model_dir, trajs, home / "runs" / f"sft-{recipe.mode}", cfg, hierarchy=hierarchy,
                           registry=settings.adapters_dir())
    return done
