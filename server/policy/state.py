"""Per-episode state of the hierarchical agent (DESIGN.md §3).

A pydantic model so every store (memory now, Redis later) can serialise it as
JSON.  ``version`` is the optimistic-concurrency counter: a commit only lands
on the version it was read at.
"""

from __future__ import annotations

import time
from enum import Enum

from glider.v1.rest import Sampling
from pydantic import BaseModel, Field


class EpisodeStatus(str, Enum):
    active = "active"
    finished = "finished"


class Turn(BaseModel):
    """One executor step: the observation it saw and the action it emitted."""

    observation: str
    action: str
    done: bool = False  # the executor's completion marker on this action
    # prompt_style "react": the thought written before the action (left out of the stored JSON when None:
    # every other style's turns stay as they were)
    thought: str | None = Field(None, exclude_if=lambda value: value is None)


class Segment(BaseModel):
    """One subgoal and the executor turns spent on it."""

    subgoal: str
    start_observation: str
    turns: list[Turn] = Field(default_factory=list)
    completed: bool = False  # ended by the executor's marker (vs c_max or episode end)
    adapter_version: str | None = None  # planner version that wrote the subgoal


class LastAnswer(BaseModel):
    """The answer to the episode's latest step, kept so that a client that retries that step (its
    reply was lost) gets the same answer again instead of a 409 or a second generation."""

    digest: str  # of the request's observation, reward, done and score
    result: dict


class EpisodeState(BaseModel):
    id: str
    task: str
    mode: str
    profile: str = "default"  # the agent profile it started with, kept to its end
    sampling: Sampling | None = None  # the episode's own sampling settings, over the server's
    status: EpisodeStatus = EpisodeStatus.active
    step: int = 0  # env steps answered so far
    version: int = 0  # optimistic concurrency counter, bumped on every commit
    current: Segment | None = None  # the subgoal being executed (hierarchical modes)
    finished: list[Segment] = Field(default_factory=list)  # bounded by plan_window
    history: list[Turn] = Field(default_factory=list)  # flat mode; bounded by history_window
    subgoal_count: int = 0
    planner_calls: int = 0
    executor_calls: int = 0
    total_reward: float = 0.0
    last_reward: float = 0.0
    adapter_versions: dict[str, str] = Field(default_factory=dict)  # role -> last version used
    last_answer: LastAnswer | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    @property
    def subgoal(self) -> str | None:
        return self.current.subgoal if self.current else None

    @property
    def steps_in_subgoal(self) -> int:
        return len(self.current.turns) if self.current else 0
