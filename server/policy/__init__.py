"""The hierarchical policy: prompt formats, per-episode state and the planner/executor controller.

Nothing here imports a web framework or an engine: the trainer builds its
training sequences with exactly these prompt functions.
"""

from glider.server.policy.controller import (
    GenerateFn,
    HierarchyConfig,
    PolicyController,
    PolicyRequest,
    StepDecision,
)
from glider.server.policy.modes import (
    ADAPTER_FOR_ROLE,
    ADAPTER_ROLES,
    ALL_ADAPTERS,
    PolicyMode,
    Role,
)
from glider.server.policy.prompts import (
    executor_prompt,
    flat_prompt,
    format_executor_target,
    parse_action,
    parse_executor_output,
    parse_subgoal,
    planner_prompt,
    sanitize,
)
from glider.server.policy.state import EpisodeState, EpisodeStatus, Segment, Turn

__all__ = [
    "ADAPTER_FOR_ROLE",
    "ADAPTER_ROLES",
    "ALL_ADAPTERS",
    "PolicyMode",
    "EpisodeState",
    "EpisodeStatus",
    "GenerateFn",
    "HierarchyConfig",
    "PolicyController",
    "PolicyRequest",
    "Role",
    "Segment",
    "StepDecision",
    "Turn",
    "executor_prompt",
    "flat_prompt",
    "format_executor_target",
    "parse_action",
    "parse_executor_output",
    "parse_subgoal",
    "planner_prompt",
    "sanitize",
]
