"""Agent profiles: many planner/executor pairs on one backbone, each a name bound to a mode and its adapters.

A profile says how an episode is played: its policy mode (``separate`` planner + executor adapters, one
``shared`` adapter, ``flat``), whether it uses adapters at all (``adapters: false`` is the base model
prompted, a baseline), and generation settings that override the server's for its episodes.

On disk, next to the adapters it owns, in the registry the server already watches:

    <root>/planner/, <root>/executor/, ...                 the ``default`` profile's adapters (today's layout)
    <root>/@profiles/default/profile.json                  the default profile's definition, once changed
    <root>/@profiles/<name>/profile.json                   another profile's definition
    <root>/@profiles/<name>/planner/<version>/ ...         its adapters: a registry of their own

``@`` is not a character of an adapter name, so ``@profiles`` is never listed as an adapter, and a
profile's adapters are namespaced by directory: publishing ``textworld``'s planner never touches
``scienceworld``'s.  Definitions are written with a rename (a reader never sees half a file), so they
survive a restart and every replica reading the volume agrees.  Without any definition the registry
loads as the ``default`` profile, with the server's settings, exactly as before profiles existed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from glider.server.adapters.registry import AdapterRegistry
from glider.server.policy.controller import HierarchyConfig
from glider.server.policy.modes import ADAPTER_ROLES, PolicyMode
from glider.v1.rest import PROFILE_PATTERN, WireModel
from pydantic import ConfigDict, Field, model_validator

DEFAULT = "default"
PROFILES_DIR = "@profiles"
DEFINITION = "profile.json"
_NAME_RE = re.compile(PROFILE_PATTERN)  # the contract's: a path segment, as an adapter's name is


class ProfileNotFound(LookupError):
    pass


class InvalidProfile(ValueError):
    pass


class ProfileProtected(Exception):
    """The request is well formed but the profile's role forbids it (deleting the server's default)."""


class GenerationSettings(WireModel):
    """A profile's own generation settings; each one left out is the server's (GLIDER_* settings)."""

    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature (0: greedy).")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    planner_max_tokens: int | None = Field(None, ge=1, le=512, description="Longest subgoal, in tokens.")
    executor_max_tokens: int | None = Field(None, ge=1, le=512, description="Longest action, in tokens.")
    c_max: int | None = Field(None, ge=1, le=100, description="Executor steps before the planner speaks again.")
    history_window: int | None = Field(None, ge=1, le=64)
    prompt_observation_chars: int | None = Field(None, ge=16, le=100_000)
    fallback_action: str | None = Field(None, min_length=1, max_length=200)
    fallback_subgoal: str | None = Field(None, min_length=1, max_length=200)
    grounding_candidates: int | None = Field(None, ge=1, le=256)
    grounding_protected: list[str] | None = Field(None, max_length=64)
    prompt_style: Literal["glider", "instruct", "react"] | None = Field(
        None, description="flat mode: 'instruct' prompts an untrained base model with plain instructions "
                          "(a prompted baseline); 'react' the same with a thought written before each action "
                          "(the paper's prompted ReAct); 'glider' is the format the adapters are trained on.")


class ProfileSpec(WireModel):
    """What the admin API takes to create or change a profile."""

    # the cross-field rule in the contract too: the instruct and react prompts are flat-mode formats
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "if": {"properties": {"generation": {"properties": {"prompt_style": {"enum": ["instruct", "react"]}},
                                             "required": ["prompt_style"]}},
               "required": ["generation"]},
        "then": {"properties": {"mode": {"const": "flat"}}, "required": ["mode"]},
    })

    mode: PolicyMode = Field(PolicyMode.separate, description="separate | shared | flat")
    adapters: bool = Field(True, description="false: the base model prompted, no adapters (a baseline)")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    @model_validator(mode="after")
    def _instruct_is_flat(self) -> ProfileSpec:
        if self.generation.prompt_style in ("instruct", "react") and self.mode is not PolicyMode.flat:
            raise ValueError(f"prompt_style {self.generation.prompt_style!r} is a flat-mode format: set mode to flat")
        return self


class Profile(ProfileSpec):
    name: str = Field(pattern=PROFILE_PATTERN)

    @property
    def adapter_names(self) -> list[str]:
        """The registry names of the adapters this profile serves (none for the prompted base model)."""
        return list(ADAPTER_ROLES[self.mode.value]) if self.adapters else []

    def hierarchy(self, server: HierarchyConfig) -> HierarchyConfig:
        """The server's policy settings with this profile's mode and generation settings on top."""
        overrides = self.generation.model_dump(exclude_none=True)
        if "grounding_protected" in overrides:
            overrides["grounding_protected"] = tuple(overrides["grounding_protected"])
        return dataclasses.replace(server, mode=self.mode.value, **overrides)

    def serving_name(self, adapter: str) -> str:
        """The adapter's name in the engine: the default profile keeps today's names; another
        profile's are prefixed, so two profiles' planners are two engine adapters."""
        return adapter if self.name == DEFAULT else f"{self.name}/{adapter}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidProfile(f"invalid profile name {name!r}: 1-64 characters of [a-z0-9_-], starting with a letter")
    return name


class ProfileStore:
    """Profiles' definitions and registries under one adapter registry root."""

    def __init__(self, root: Path, default: ProfileSpec):
        self.root = Path(root)
        self.default = Profile(name=DEFAULT, **default.model_dump())

    def _dir(self, name: str) -> Path:
        return self.root / PROFILES_DIR / check_name(name)

    def names(self) -> list[str]:
        base = self.root / PROFILES_DIR
        found = sorted(p.name for p in base.iterdir() if _NAME_RE.match(p.name) and (p / DEFINITION).is_file()) \
            if base.is_dir() else []
        return [DEFAULT] + [n for n in found if n != DEFAULT]

    def get(self, name: str) -> Profile:
        path = self._dir(name) / DEFINITION
        if not path.is_file():
            if name == DEFAULT:
                return self.default
            raise ProfileNotFound(f"no profile named {name!r} (profiles: {', '.join(self.names())})")
        try:
            return Profile(name=name, **ProfileSpec.model_validate_json(path.read_text()).model_dump())
        except ValueError as exc:
            raise InvalidProfile(f"profile {name!r}: {path} is not a valid definition: {exc}") from None

    def all(self) -> list[Profile]:
        return [self.get(name) for name in self.names()]

    def put(self, name: str, spec: ProfileSpec) -> Profile:
        """Create or replace a profile's definition (atomically: a reader sees the old or the new)."""
        profile = Profile(name=check_name(name), **spec.model_dump())
        folder = self._dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{DEFINITION}-", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the server may run as another user
            os.replace(tmp, folder / DEFINITION)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return profile

    def delete(self, name: str) -> None:
        """Remove a profile with its adapters (renamed out of sight first, then deleted)."""
        if check_name(name) == DEFAULT:
            raise ProfileProtected("the default profile cannot be deleted: it serves every request that names none")
        folder = self._dir(name)
        if not (folder / DEFINITION).is_file():
            raise ProfileNotFound(f"no profile named {name!r}")
        trash = folder.with_name(f".deleted-{name}-{time.monotonic_ns()}")
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def registry(self, name: str) -> AdapterRegistry:
        """The adapter registry a profile publishes into and serves from."""
        return AdapterRegistry(self.root if check_name(name) == DEFAULT else self._dir(name))
