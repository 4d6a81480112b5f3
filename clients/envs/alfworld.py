"""ALFWorld runner (text-only TextWorld engine over ALFRED's PDDL games).

ALFWorld's game files come from its release downloads, which this project
never fetches: point ``ALFWORLD_DATA`` at a directory that holds them
(``alfworld-download`` creates one).  Splits follow the benchmark: *seen* =
``valid_seen``, *unseen* = ``valid_unseen``, plus ``train``.
"""

from __future__ import annotations

import os
from pathlib import Path

from glider.clients.envs.base import EnvStep

SPLITS = {"train": "train", "seen": "valid_seen", "dev": "valid_seen", "unseen": "valid_unseen",
          "test": "valid_unseen"}
GAME_FILE = "game.tw-pddl"


class ALFWorldUnavailable(RuntimeError):
    """ALFWorld cannot run here; the message says what is missing."""


def data_root(root: Path | str | None = None) -> Path:
    root = root or os.environ.get("ALFWORLD_DATA")
    if not root:
        raise ALFWorldUnavailable(
            "ALFWorld needs its game files: set ALFWORLD_DATA to the directory that holds "
            "json_2.1.1/ (created by `alfworld-download`; this project downloads nothing)")
    root = Path(root)
    if not (root / "json_2.1.1").is_dir():
        raise ALFWorldUnavailable(f"ALFWORLD_DATA={root} has no json_2.1.1/ directory of games")
    return root


def list_games(split: str, root: Path | str | None = None) -> list[Path]:
    """Every ``game.tw-pddl`` of a split, sorted (so positions are stable)."""
    try:
        folder = data_root(root) / "json_2.1.1" / SPLITS[split]
    except KeyError:
        raise ValueError(f"unknown ALFWorld split {split!r} ({', '.join(SPLITS)})") from None
    games = sorted(folder.glob(f"*/*/{GAME_FILE}"))
    if not games:
        raise ALFWorldUnavailable(f"no {GAME_FILE} files under {folder}")
    return games


class ALFWorld:
    """One ALFWorld game; the task is the game's goal line, scores are 0 or 1 (won)."""

    def __init__(self, game_file: Path):
        try:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
        except ImportError as exc:  # pragma: no cover - both are dependencies
            raise ALFWorldUnavailable(f"the alfworld package is not installed: {exc}") from exc
        self.game_file = Path(game_file)
        self.task_name = self.game_file.parent.parent.name.split("-")[0]
        infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=True)
        self.env = textworld.start(str(self.game_file), request_infos=infos,
                                   wrappers=[AlfredDemangler(), AlfredInfos()])
        self.task = ""

    @staticmethod
    def _split(feedback: str) -> tuple[str, str]:
        """ALFWorld's first observation ends with 'Your task is to: ...'."""
        marker = "Your task is to:"
        if marker in feedback:
            head, _, goal = feedback.partition(marker)
            return head.strip(), goal.strip()
        return feedback.strip(), ""

    def _step(self, state, done: bool) -> EnvStep:
        won = bool(state.won)
        return EnvStep(observation=(state.feedback or "").strip(), reward=1.0 if won else 0.0,
                       done=bool(done) or won, score=1.0 if won else 0.0,
                       valid_actions=list(state.admissible_commands or []),
                       info={"walkthrough": list(state.policy_commands or []), "won": won})

    def reset(self) -> EnvStep:
        state = self.env.reset()
        observation, self.task = self._split(state.feedback or "")
        step = self._step(state, False)
        step.observation = observation
        return step

    def step(self, action: str) -> EnvStep:
        state, _, done = self.env.step(action)
        return self._step(state, done)

    def close(self) -> None:
        self.env.close()
