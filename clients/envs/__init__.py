"""Environment runners: reset -> (task, observation); step(action) -> observation, reward, done, score."""

from glider.clients.envs.base import Environment, EnvStep

__all__ = ["EnvStep", "Environment"]
