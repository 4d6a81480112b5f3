"""Contract v1, REST half: the wire types of ``POST /act`` and the episode endpoints (pydantic v2).

The server validates requests with these models, the SDK builds and reads them, and the Agent checks
gRPC requests with the same patterns, so both transports refuse the same input. The gRPC half is
``agent.proto`` beside this file; the two carry the same fields.
"""

from __future__ import annotations

import functools
import json
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

EPISODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
# an agent profile's name (a planner/executor pair and its settings on the server's backbone)
PROFILE_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"


# The largest seed: every JSON reader holds integers up to 2^53 - 1 exactly (a double's mantissa); above
# it a client in JavaScript, or a schema checker that compares as doubles, sees another number.
MAX_SEED = 2**53 - 1


def _json_kind(annotation) -> str | None:
    """"boolean" or "number" for a field of that JSON type (optional or not); None for the others."""
    kinds = {a for a in get_args(annotation) if a is not type(None)} or {annotation}
    if kinds == {bool}:
        return "boolean"
    if kinds and kinds <= {int, float}:
        return "number"
    return None


@functools.cache
def _typed_fields(model: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """(field, "boolean" | "number") of a model's fields with such a JSON type: read once per model,
    not on every request."""
    return tuple((name, kind) for name, info in model.model_fields.items()
                 if (kind := _json_kind(info.annotation)) is not None)


class WireModel(BaseModel):
    """A request body: unknown fields refused, and each JSON value of the type its schema says."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _json_types_are_exact(cls, data):
        """Lax validation reads a JSON ``false`` as the number 0 (a ``step`` of 0), ``0`` as false and
        ``"3"`` as 3; the schema says a boolean or a number, so any other JSON type is refused.
        (Strict mode would refuse ``3.0`` for an integer, which JSON Schema allows.)"""
        if isinstance(data, dict):
            for name, kind in _typed_fields(cls):
                value = data.get(name)
                if value is None:
                    continue
                if kind == "boolean" and not isinstance(value, bool) or (
                        kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float))):
                    raise ValueError(f"{name} must be a {kind}, not {json.dumps(value)[:40]}")
        return data


# A task must say something: at least one character that is not blank. "Blank" is spelled out
# instead of written \s, because the engines that read this pattern disagree on \s: Python's
# str.isspace() counts the information separators \x1c-\x1f, JSON Schema's (ECMA) \s counts the
# byte-order mark \ufeff but not \x85, pydantic's (Rust) \s counts \x85 but not \ufeff. This class
# is their union, so the schema, pydantic, schemathesis (which found the disagreement) and the
# Agent (gRPC's only check) refuse the same tasks.
BLANK_CHARS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
TASK_PATTERN = rf"[^{BLANK_CHARS}]"


class Sampling(WireModel):
    """An episode's own sampling settings: every field left out keeps the server's default. The
    server bounds them (``GLIDER_EPISODE_MAX_TEMPERATURE``); a seed makes a sampled episode
    reproducible whatever its id."""

    temperature: float | None = Field(None, ge=0.0, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seeds every sampled generation of the episode.")


class ActRequest(WireModel):
    """One environment step: the observation the last action produced (or the first one)."""

    # the cross-field rule, in the contract too: an episode to continue, or a task to start one
    model_config = ConfigDict(json_schema_extra={
        "anyOf": [
            {"required": ["episode_id"], "properties": {"episode_id": {"type": "string"}}},
            {"required": ["task"], "properties": {"task": {"type": "string"}}},
        ],
        "not": {"required": ["episode_id", "sampling"], "properties": {"episode_id": {"type": "string"}}},
    })

    observation: str = Field(description="What the environment shows now.")
    episode_id: str | None = Field(None, pattern=EPISODE_ID_PATTERN,
                                   description="Continue this episode; omit to start a new one.")
    task: str | None = Field(None, pattern=TASK_PATTERN,
                             description="Task description; required to start an episode.")
    reward: float = Field(0.0, description="Reward the last action earned.")
    done: bool = Field(False, description="The environment ended the episode; no action is returned.")
    step: int | None = Field(None, ge=0, description="Expected step index; a mismatch is refused (409).")
    score: float | None = Field(None, description="The environment's own score now, if it keeps one (recorded).")
    sampling: Sampling | None = Field(None, description="The new episode's own sampling settings (only when "
                                                        "starting one).")
    profile: str | None = Field(None, pattern=PROFILE_PATTERN,
                                description="The agent profile of the episode this step starts (omitted: the "
                                            "server's default). A later step may only name the episode's own: an "
                                            "episode keeps its profile. Unknown: 404.")
    valid_actions: list[str] | None = Field(
        None, description="The environment's admissible commands now. The action answered is then one of them, "
                          "byte for byte: the executor's own when it generated one (compared after stripping, "
                          "collapsing whitespace and case-folding), else the one its model scores highest among "
                          "those most similar to its generation. Empty: as if left out. The server bounds the "
                          "count and each command's length (maxItems, maxLength).")

    @model_validator(mode="after")
    def _episode_or_task(self) -> ActRequest:
        if self.episode_id is None and self.task is None:
            raise ValueError("task is required to start an episode (or give episode_id to continue one)")
        if self.episode_id is not None and "sampling" in self.model_fields_set:
            raise ValueError("sampling is set when an episode starts, not on a later step")
        return self


class ActResponse(BaseModel):
    episode_id: str
    step: int = Field(description="Index of this step in the episode (0-based).")
    action: str | None = Field(description="The action to take; null when the episode is done.")
    subgoal: str | None
    new_subgoal: bool = Field(description="The planner wrote a new subgoal at this step.")
    subgoal_done: bool = Field(description="The executor marked the subgoal complete with this action.")
    subgoal_index: int
    done: bool
    adapter_versions: dict[str, str] = Field(description="Adapter name -> version that served this step.")
    fallback: bool = Field(description="A fallback subgoal/action replaced unusable model output.")
    grounded: bool = Field(False, description="The action is an admissible command the executor's model chose "
                                              "by its scores, because its generation was none of them.")
    generated_action: str | None = Field(None, description="The executor's own action when `valid_actions` was "
                                                           "sent (null: its output was unusable).")
    profile: str = Field("default", description="The agent profile that played the step (the episode's).")


class EpisodeCreate(WireModel):
    task: str = Field(pattern=TASK_PATTERN)
    episode_id: str | None = Field(None, pattern=EPISODE_ID_PATTERN)
    sampling: Sampling | None = None
    profile: str | None = Field(None, pattern=PROFILE_PATTERN, description="Omitted: the server's default.")


class TurnView(BaseModel):
    observation: str
    action: str
    done: bool
    thought: str | None = Field(None, description="A 'react' profile's thought, written before the action.")


class SegmentView(BaseModel):
    subgoal: str
    turns: list[TurnView]
    completed: bool
    adapter_version: str | None


class EpisodeView(BaseModel):
    episode_id: str
    task: str
    mode: str
    profile: str = "default"
    status: str
    step: int
    subgoal: str | None
    steps_in_subgoal: int
    subgoal_count: int
    planner_calls: int
    executor_calls: int
    total_reward: float
    adapter_versions: dict[str, str]
    sampling: Sampling | None = None
    current: SegmentView | None
    finished: list[SegmentView]
    history: list[TurnView]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    backend: str | None = None
    mode: str | None = None
    adapters: dict[str, str] = Field(default_factory=dict)
    profiles: dict[str, dict] = Field(default_factory=dict, description="Each agent profile: its mode, the "
                                                                       "adapter versions it serves, and its "
                                                                       "state (ready | loading | broken).")
    detail: str | None = Field(None, description="Why the server cannot serve, when it cannot.")
