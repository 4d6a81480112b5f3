"""The on-disk formats of GLIDER's training data (JSON Lines, one object per line).

**Trajectory** (``trajectories/*.jsonl``; what collection and the server's episode
logs both become): one episode of one environment.

    {"v": 1, "id": "scienceworld/boil/train/12", "env": "scienceworld", "task_name": "boil",
     "split": "train", "variation": 12, "source": "gold", "task": "Your task is to boil water ...",
     "initial_score": 0.0,
     "steps": [{"observation": "...", "action": "open door to kitchen", "reward": 0.0,
                "score": 0.0, "done": false, "subgoal": null, "subgoal_done": null}, ...],
     "final_observation": "..."}

``steps[t]`` holds o_t, a_t, the reward r_t that a_t earned (score delta, 0..1
scale), the score after a_t and whether the episode ended there.
``subgoal``/``subgoal_done``/``new_subgoal`` are set on server-recorded episodes (what the
planner said, the executor's completion marker, whether the planner was asked at this
step) and null on expert data; ``generated_action``/``grounded`` on steps served with admissible
commands (the model's own text, and whether ``action`` is the command grounding chose instead).

**D^h** (``dh.jsonl``), one transition per subgoal segment (the poster's high level):
``{"traj", "task", "segment", "observation": o_t, "context": [finished segments],
"subgoal": g_t, "reward": Σ r over the segment, "next_observation": o_{t+c}, "done"}``.

**D^l** (``dl.jsonl``), one transition per primitive step inside a segment:
``{"traj", "task", "segment", "subgoal": g_t, "observation": o_t, "history": [turns],
"action": a_t, "reward": r̂_t, "env_reward": r_t, "next_observation": o_{t+1},
"subgoal_done", "done"}`` with the intrinsic reward r̂_t = −κ per step, plus on the segment's
last step 1 if it completed the subgoal, 0 if not, −1 if the episode failed in it
(``hierarchy.IntrinsicReward``).

**Flat** (``flat.jsonl``): ``{"traj", "task", "observation", "history", "action",
"reward", "next_observation", "done"}`` for the no-hierarchy baseline.

Observations are stored as the environment gave them; prompts are built from
them by the server's own prompt code (``glider.server.policy.prompts``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class Step(BaseModel):
    observation: str
    action: str
    reward: float = 0.0
    score: float = 0.0
    done: bool = False
    subgoal: str | None = None
    subgoal_done: bool | None = None
    new_subgoal: bool | None = None  # the planner wrote this subgoal at this step (even if same text)
    # a grounded step (the application sent admissible commands): the executor's own action, and
    # whether ``action`` is a command its model's scores chose instead (``action`` is what ran)
    generated_action: str | None = None
    grounded: bool | None = None


class Trajectory(BaseModel):
    v: int = SCHEMA_VERSION
    id: str
    env: str = "scienceworld"
    task_name: str = ""
    split: str = "train"
    variation: int | None = None
    source: str = "gold"  # gold | server | perturbed | ...
    task: str
    initial_score: float = 0.0
    steps: list[Step] = Field(default_factory=list)
    final_observation: str = ""
    sampling: dict | None = None  # a server-recorded episode's own sampling settings (temperature, seed)

    @property
    def final_score(self) -> float:
        return self.steps[-1].score if self.steps else self.initial_score

    @property
    def group(self) -> str:
        """What a train/validation split keeps together: the variation (never single steps)."""
        if self.variation is not None:
            return f"{self.env}/{self.task_name}/{self.split}/{self.variation}"
        return self.id


def read_trajectories(paths) -> list[Trajectory]:
    from pathlib import Path

    out = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(Trajectory.model_validate_json(line))
    return out
