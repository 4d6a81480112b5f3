"""Play environment episodes through the agent's API and report what happened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from glider.clients.envs.base import Environment
from glider.clients.sdk import GliderClient


@dataclass
class StepRecord:
    step: int
    subgoal: str | None
    new_subgoal: bool
    action: str
    reward: float
    score: float
    observation: str


@dataclass
class EpisodeReport:
    episode_id: str
    task: str
    steps: list[StepRecord] = field(default_factory=list)
    score: float = 0.0  # final score, 0..1
    max_score: float = 0.0  # best score reached, 0..1
    done: bool = False

    @property
    def subgoals(self) -> int:
        return sum(1 for s in self.steps if s.new_subgoal)


def play_episode(client: GliderClient, env: Environment, max_steps: int = 50,
                 on_step: Callable[[StepRecord], None] | None = None) -> EpisodeReport:
    first = env.reset()
    reply = client.act(observation=first.observation, task=env.task)
    report = EpisodeReport(episode_id=reply.episode_id, task=env.task, score=first.score,
                           max_score=first.score)
    for _ in range(max_steps):
        assert reply.action is not None
        result = env.step(reply.action)
        record = StepRecord(step=reply.step, subgoal=reply.subgoal, new_subgoal=reply.new_subgoal,
                            action=reply.action, reward=result.reward, score=result.score,
                            observation=result.observation)
        report.steps.append(record)
        report.score = result.score
        report.max_score = max(report.max_score, result.score)
        if on_step is not None:
            on_step(record)
        last = len(report.steps) >= max_steps
        reply = client.act(observation=result.observation, episode_id=reply.episode_id,
                           reward=result.reward, done=result.done or last)
        if result.done or last:
            report.done = result.done
            break
    return report
