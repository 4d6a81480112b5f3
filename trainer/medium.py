"""Medium-quality data for ORL, made as the paper makes it: an SFT policy trained on half of the train
variations plays the other half through the real server, and the episodes the server records are the data.

1. **Halves.**  The expert trajectories are split by variation (``split_by_group`` at one half, seeded):
   the policy trains on one half and never sees the other.
2. **SFT** on the first half, into a registry of its own (``<out>/registry``), with the recipe's SFT
   settings; resumable, and skipped when its adapters are already published.
3. **Play.**  ``glider serve`` on that registry records every step (``<out>/episodes``); each variation of
   the second half is played once per seed, sampled (each episode its own temperature and seed, recorded),
   through the evaluation harness (resumable per seed: ``<out>/play-seed<k>``).
4. **Trajectories.**  The server's records become ``Trajectory`` objects with source ``server`` and the
   variation they were played on (so a held-out split by variation keeps them with their expert
   trajectory), written to ``<out>/medium.jsonl``: what ``glider train orl --medium`` reads.

Why medium data: expert data alone shows the critic one action per state, always the right one; the SFT
policy's own mistakes (wrong objects, loops, a subgoal abandoned) with their real rewards are what the
advantage can rank against.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glider.trainer.data.hierarchy import SegmentationConfig, split_by_group
from glider.trainer.data.schema import Trajectory, read_trajectories
from glider.trainer.training import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class MediumConfig:
    mode: str = "separate"  # the medium policy's adapters (separate | shared | flat)
    half_seed: int = 1  # draws which variations the policy trains on and which it plays
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=2e-3, epochs=30, batch_tokens=2048, patience=4, eval_every=40, max_minutes=9))
    seeds: tuple[int, ...] = (0, 1)  # episodes per played variation, one per seed (the paper: two seeds)
    temperature: float = 0.7
    max_steps: int = 50
    parallel: int | None = None  # episodes in flight (None: the evaluation's default)
    backend: str = "vllm"
    c_max: int = 10  # the executor's step budget (segments longer than it are cut, as served)


@dataclass
class MediumReport:
    trained_on: int  # expert trajectories the medium policy learnt from
    played_variations: int
    episodes: int  # recorded episodes turned into trajectories
    mean_score: float  # their mean final score, 0..1 (the data's quality, beside the expert's 1.0)
    path: Path


def halves(trajectories: Sequence[Trajectory], seed: int) -> tuple[list[Trajectory], list[Trajectory]]:
    """(train half, play half) by variation: no variation is in both."""
    return split_by_group(trajectories, 0.5, seed)


def medium_plan(play_half: Sequence[Trajectory], max_steps: int):
    """The played half as an evaluation plan of train variations (one episode per variation)."""
    from glider.clients.protocols import Plan, PlannedEpisode

    episodes = sorted({(t.task_name, t.variation) for t in play_half if t.variation is not None})
    return Plan(protocol="medium", episodes=[PlannedEpisode("train", task, v) for task, v in episodes],
                max_steps={"*": max_steps}, source="the held-out half of the expert data's train variations")


def label_trajectories(trajs: Sequence[Trajectory], played: dict[str, tuple[str, int]]) -> list[Trajectory]:
    """The recorded trajectories of the played episodes, with the variation each was played on."""
    out = []
    for t in trajs:
        episode_id = t.id.removeprefix("server/")
        if episode_id not in played:
            continue
        task, variation = played[episode_id]
        out.append(t.model_copy(update={"env": "scienceworld", "task_name": task, "split": "train",
                                        "variation": variation}))
    return out


def collect_medium(model_dir: Path, trajectories: Sequence[Trajectory], out: Path, cfg: MediumConfig, *,
                   hierarchy=None, say: Callable[[str], None] = print) -> MediumReport:
    """Train the medium policy, play the other half through a real server, and write ``medium.jsonl``."""
    from glider.clients.evaluate import EvalConfig, load_results, run_episodes
    from glider.clients.local_server import LocalServer
    from glider.server.policy.controller import HierarchyConfig
    from glider.server.policy.modes import ADAPTER_ROLES
    from glider.trainer.data.logs import trajectories_from_logs
    from glider.trainer.pipeline import sft_is_current
    from glider.trainer.sft import SFTConfig, run_sft

    out = Path(out)
    registry = out / "registry"
    train_half, play_half = halves(trajectories, cfg.half_seed)
    if not train_half or not play_half:
        raise ValueError(f"{len(trajectories)} trajectories cannot be halved by variation: need more variations")
    if not sft_is_current(registry, model_dir, list(ADAPTER_ROLES[cfg.mode])):
        say(f"medium policy: SFT ({cfg.mode}) on {len(train_half)} of {len(trajectories)} trajectories")
        run_sft(model_dir, train_half, out / "sft", SFTConfig(mode=cfg.mode, train=cfg.sft,
                                                               segmentation=SegmentationConfig(max_len=cfg.c_max)),
                hierarchy=hierarchy or HierarchyConfig(mode=cfg.mode, c_max=cfg.c_max), registry=registry)
    plan = medium_plan(play_half, cfg.max_steps)
    record_dir = out / "episodes"
    runs = {seed: out / f"play-seed{seed}" for seed in cfg.seeds}
    keys = {e.key for e in plan.episodes}
    todo = [seed for seed, run in runs.items() if not keys <= {r.key for r in load_results(run)}]
    if todo:  # a finished collection starts no server
        say(f"medium policy plays {len(plan.episodes)} variations × {len(todo)} seeds at T={cfg.temperature}")
        server = LocalServer(out, GLIDER_MODE=cfg.mode, GLIDER_MODEL=str(model_dir), GLIDER_ADAPTERS=str(registry),
                             GLIDER_BACKEND=cfg.backend, GLIDER_RECORD="true", GLIDER_RECORD_DIR=str(record_dir),
                             GLIDER_C_MAX=str(cfg.c_max))
        with server:
            for seed in todo:
                run_episodes(EvalConfig(plan=plan, server=server.url, transport="rest", parallel=cfg.parallel,
                                        temperature=cfg.temperature, seed=seed), out=runs[seed])
    played = {r.episode_id: (r.task, r.variation) for run in runs.values() for r in load_results(run)
              if r.episode_id and r.key in keys}
    trajs = label_trajectories(trajectories_from_logs(record_dir, include_open=True), played)
    path = out / "medium.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(t.model_dump_json() + "\n" for t in trajs), encoding="utf-8")
    tmp.replace(path)
    mean = sum(max(0.0, t.final_score) for t in trajs) / max(1, len(trajs))
    (out / "medium_report.json").write_text(json.dumps({
        "trained_on": len(train_half), "played_variations": len(plan.episodes), "episodes": len(trajs),
        "mean_score": mean, "seeds": list(cfg.seeds), "temperature": cfg.temperature}, indent=2) + "\n")
    return MediumReport(trained_on=len(train_half), played_variations=len(plan.episodes), episodes=len(trajs),
                        mean_score=mean, path=path)


def load_medium(path: Path) -> list[Trajectory]:
    """``medium.jsonl`` (a file, or the directory ``collect_medium`` wrote)."""
    path = Path(path)
    return read_trajectories([path / "medium.jsonl" if path.is_dir() else path])
