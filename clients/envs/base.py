"""The small interface every environment runner implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class EnvStep:
    observation: str
    reward: float = 0.0
    done: bool = False
    score: float = 0.0
    valid_actions: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class Environment(Protocol):
    task: str

    def reset(self) -> EnvStep: ...

    def step(self, action: str) -> EnvStep: ...

    def close(self) -> None: ...
