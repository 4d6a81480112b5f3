"""TextWorld runner: games generated offline with ``tw-make`` (seeded), played through the ``textworld`` package.

The tw-cooking family is ALFWorld-like (find, take, cook, cut, prepare a meal)
and fully offline: seeds give as many train/test games as wanted, each with a
walkthrough (for expert data) and admissible commands per step.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from glider.clients.envs.base import EnvStep

#: the cooking family's difficulty knobs (tw-make tw-cooking --help)
COOKING = ("--recipe", "1", "--take", "1", "--go", "6", "--open", "--cook", "--cut")


def generate_game(out_dir: Path, seed: int, family: str = "tw-cooking", options: tuple[str, ...] = COOKING
                  ) -> Path:
    """``tw-make`` one game (cached: a game file that exists is reused)."""
    out_dir = Path(out_dir)
    game = out_dir / f"{family}-s{seed}.z8"
    if game.is_file():
        return game
    # tw-make is a script installed beside this interpreter (found even when the venv is not activated)
    beside = Path(sys.executable).parent / "tw-make"
    tw_make = str(beside) if beside.is_file() else shutil.which("tw-make")
    if tw_make is None:
        raise RuntimeError("tw-make not found: install the textworld package")
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, tw_make, family, *options, "--seed", str(seed), "--output", str(game),
                    "--silent"], check=True, capture_output=True)
    return game


class TextWorld:
    """One TextWorld game; ``reset`` starts it, ``step`` plays; scores are normalised to 0..1."""

    def __init__(self, game_file: Path):
        import textworld

        self.game_file = Path(game_file)
        self.task_name = self.game_file.stem
        infos = textworld.EnvInfos(objective=True, description=True, inventory=True,
                                   admissible_commands=True, policy_commands=True, score=True,
                                   max_score=True, won=True, lost=True)
        self.env = textworld.start(str(self.game_file), request_infos=infos)
        self.task = ""
        self.max_score = 1
        self._score = 0.0

    def _step(self, state, done: bool) -> EnvStep:
        self.max_score = max(1, state.max_score or 1)
        score = float(state.score or 0) / self.max_score
        reward, self._score = score - self._score, score  # textworld reports the score, not its change
        obs = (state.feedback or "").strip()
        return EnvStep(
            observation=obs,
            reward=reward,
            done=bool(done),
            score=score,
            valid_actions=list(state.admissible_commands or []),
            info={"walkthrough": list(state.policy_commands or []), "won": state.won, "lost": state.lost},
        )

    def reset(self) -> EnvStep:
        state = self.env.reset()
        self.task = (state.objective or "").strip()
        self._score = 0.0
        return self._step(state, False)

    def step(self, action: str) -> EnvStep:
        # the z-machine interpreter (frotz) is C: hand it printable text only, whoever the client is
        action = "".join(ch for ch in action if ch.isprintable())
        state, _score, done = self.env.step(action)
        return self._step(state, done)

    def close(self) -> None:
        self.env.close()
