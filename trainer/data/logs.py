"""Convert the server's episode logs (``TrajectoryRecorder`` JSONL) into ``Trajectory`` objects.

Online data and offline data then share one format and one path to D^h / D^l.
A log record t holds o_t, the reward and score that a_{t-1} earned, and the
agent's answer a_t with the subgoal it served; so step t of the trajectory is
record t's observation, action and subgoal with record t+1's reward, score and
done.  An episode whose last answer has no following record (the client went
away) ends at the last step whose outcome is known.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from glider.server.store.recorder import SCHEMA_VERSION as LOG_SCHEMA_VERSION
from glider.trainer.data.schema import Step, Trajectory

log = logging.getLogger(__name__)


def read_records(paths: Iterable[Path]) -> list[dict]:
    """Records from sealed log files (``*.jsonl``; a ``.jsonl.open`` file is still being written)."""
    records = []
    for path in paths:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not JSON, skipped", path, n)
                continue
            if record.get("v") != LOG_SCHEMA_VERSION:
                log.warning("%s:%d: log schema %r, expected %d; skipped", path, n, record.get("v"),
                            LOG_SCHEMA_VERSION)
                continue
            records.append(record)
    return records


def log_files(directory: Path, *, include_open: bool = False) -> list[Path]:
    """Sealed log files under ``directory``, in sub-folders too (one per replica on a shared
    volume); ``include_open`` adds the ones a running server is still appending to (a partly
    written last line is skipped by ``read_records``)."""
    files = list(Path(directory).rglob("*.jsonl"))
    if include_open:
        files += Path(directory).rglob("*.jsonl.open")
    return sorted(files)


def trajectories_from_records(records: Iterable[dict], *, min_steps: int = 1,
                              profile: str | None = None) -> list[Trajectory]:
    """``profile``: only the episodes that agent profile played (records from before profiles existed
    are the default profile's)."""
    by_episode: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if profile is not None and record.get("profile", "default") != profile:
            continue
        by_episode[record["episode_id"]].append(record)
    out = []
    for episode_id, recs in by_episode.items():
        recs.sort(key=lambda r: r["step"])
        first = recs[0]
        if first["step"] != 0:
            log.warning("episode %s: log starts at step %d (older records rotated away?)", episode_id,
                        first["step"])
        first_score = first.get("score")
        traj = Trajectory(id=f"server/{episode_id}", env="server", source="server", task=first["task"],
                          initial_score=first_score if first_score is not None else 0.0,
                          sampling=first.get("sampling"))
        score = traj.initial_score
        for rec, nxt in zip(recs, recs[1:], strict=False):
            if rec.get("action") is None:
                break
            next_score = nxt.get("score")
            score = next_score if next_score is not None else score + nxt.get("reward", 0.0)
            traj.steps.append(Step(observation=rec["observation"], action=rec["action"],
                                   reward=nxt.get("reward", 0.0), score=score, done=bool(nxt.get("done")),
                                   subgoal=rec.get("subgoal"), subgoal_done=rec.get("subgoal_done"),
                                   new_subgoal=rec.get("new_subgoal"),
                                   generated_action=rec.get("generated_action"), grounded=rec.get("grounded")))
            traj.final_observation = nxt["observation"]
        if len(traj.steps) >= min_steps:
            out.append(traj)
    out.sort(key=lambda t: t.id)
    return out


def trajectories_from_logs(directory: Path, *, include_open: bool = False, **kwargs) -> list[Trajectory]:
    return trajectories_from_records(read_records(log_files(directory, include_open=include_open)), **kwargs)
