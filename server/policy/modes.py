"""The vocabulary of roles, policy modes and adapters, written once.

A *role* is a kind of prompt (the planner writes a subgoal, the executor an action, the flat policy an
action with no subgoal); a *mode* says which roles an episode uses and which LoRA adapter serves each
one. The server routes generations with this table, the trainer trains each adapter on its roles'
sequences, and the CLI lists the adapters from it.
"""

from __future__ import annotations

from enum import Enum


class Role(str, Enum):
    planner = "planner"
    executor = "executor"
    flat = "flat"

    def __str__(self) -> str:  # the value in f-strings on every Python (3.11 changed the default)
        return self.value


class PolicyMode(str, Enum):
    """How the planner and the executor map onto adapters.

    ``separate``: two LoRA adapters (planner, executor) on one backbone — the default.
    ``shared``: one adapter, the role chosen only by the prompt (the paper's setting).
    ``flat``: no hierarchy, one policy emits actions directly (the ablation baseline).
    """

    separate = "separate"
    shared = "shared"
    flat = "flat"

    def __str__(self) -> str:
        return self.value


#: the table: which adapter serves each prompt role, per mode
ADAPTER_FOR_ROLE: dict[str, dict[Role, str]] = {
    PolicyMode.separate.value: {Role.planner: "planner", Role.executor: "executor"},
    PolicyMode.shared.value: {Role.planner: "shared", Role.executor: "shared"},
    PolicyMode.flat.value: {Role.flat: "flat"},
}

#: the same table read the other way: per mode, each adapter and the roles whose sequences train it
ADAPTER_ROLES: dict[str, dict[str, list[str]]] = {
    mode: {adapter: [role.value for role, a in roles.items() if a == adapter] for adapter in dict.fromkeys(roles.values())}
    for mode, roles in ADAPTER_FOR_ROLE.items()
}

#: every adapter name any mode serves
ALL_ADAPTERS: list[str] = list(dict.fromkeys(a for adapters in ADAPTER_ROLES.values() for a in adapters))
