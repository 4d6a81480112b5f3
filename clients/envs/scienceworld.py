"""ScienceWorld runner (the real JVM environment through the ``scienceworld`` package).

Each environment owns a JVM (py4j).  Left alone the JVM sizes its heap from
the machine's memory (~2 GB resident each); ``jvm_options`` bounds it so many
environments can run side by side.  Splits follow the paper's baselines:
*seen* = dev variations, *unseen* = test variations.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from contextlib import contextmanager

from glider.clients.envs.base import EnvStep

# py4j logs every gateway shutdown with a traceback at INFO; keep it to real problems
logging.getLogger("py4j").setLevel(logging.WARNING)

#: how long a closed environment's JVM may take to exit before it is killed
JVM_EXIT_SECONDS = 10.0
#: heap bound per JVM; enough for the heaviest task families' gold paths
DEFAULT_JVM_OPTIONS = "-Xmx384m -XX:+UseSerialGC"
#: most admissible commands a grounded step sends: the server's default ``GLIDER_MAX_VALID_ACTIONS``
MAX_VALID_ACTIONS = 4096
#: ScienceWorld 1.2's 30 task families (``env.get_task_names()``), without starting a JVM to ask
TASK_FAMILIES = (
    "boil", "change-the-state-of-matter-of", "chemistry-mix", "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color", "find-animal", "find-living-thing", "find-non-living-thing",
    "find-plant", "freeze", "grow-fruit", "grow-plant", "identify-life-stages-1", "identify-life-stages-2",
    "inclined-plane-determine-angle", "inclined-plane-friction-named-surfaces",
    "inclined-plane-friction-unnamed-surfaces", "lifespan-longest-lived",
    "lifespan-longest-lived-then-shortest-lived", "lifespan-shortest-lived",
    "measure-melting-point-known-substance", "measure-melting-point-unknown-substance", "melt",
    "mendelian-genetics-known-plant", "mendelian-genetics-unknown-plant", "power-component",
    "power-component-renewable-vs-nonrenewable-energy", "test-conductivity",
    "test-conductivity-of-unknown-substances", "use-thermometer",
)
SPLITS = {"train": "get_variations_train", "dev": "get_variations_dev", "test": "get_variations_test",
          "seen": "get_variations_dev", "unseen": "get_variations_test"}


@contextmanager
def jvm_options(options: str = DEFAULT_JVM_OPTIONS):
    """JAVA_TOOL_OPTIONS for JVMs started inside the block (py4j inherits the environment)."""
    old = os.environ.get("JAVA_TOOL_OPTIONS")
    os.environ["JAVA_TOOL_OPTIONS"] = options
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("JAVA_TOOL_OPTIONS", None)
        else:
            os.environ["JAVA_TOOL_OPTIONS"] = old


@functools.cache
def _lean_env_class():
    from scienceworld import ScienceWorldEnv

    # bound here, not looked up in this module's globals: at interpreter exit ``__del__`` may run after
    # the module's names (``sys`` among them) have been set to None
    finalizing, monotonic, sleep, exit_seconds = sys.is_finalizing, time.monotonic, time.sleep, JVM_EXIT_SECONDS

    class LeanScienceWorldEnv(ScienceWorldEnv):
        """``ScienceWorldEnv`` whose ``step`` (and so ``reset``) leaves out the step's list of valid actions.

        The package's ``step`` fills ``info["valid"]`` with every valid action-object combination (about
        1,500 strings, built in the JVM and sent over py4j) after every move, and its ``info["taskDesc"]``
        with the unchanging task text: measured on gold paths, 91 % of a step's time went to the list. Nothing
        here reads either; who needs the list asks for it (``get_valid_action_object_combinations``).
        Everything else (observation, score, reward, completion, step limit, ``look``, ``inv``, ``moves``)
        is the package's own computation (scienceworld 1.2, pinned), checked step by step against it in
        ``tests/integration/test_scienceworld_env.py``.
        """

        def step(self, input_str: str):
            observation = self.server.step(input_str)
            score = int(round(100 * self.server.getScore()))
            moves = self.get_num_moves()
            done = bool(self.server.getCompleted()) or moves > self.envStepLimit or score < 0
            reward = score - self.lastStepScore
            self.lastStepScore = score
            info = {"moves": moves, "score": score, "reward": reward, "look": self.look(), "inv": self.inventory(),
                    "variationIdx": self.variationIdx, "taskName": self.taskName,
                    "simplificationStr": self.simplificationStr}
            return observation, reward, done, info

        def close(self) -> None:
            """The package's close, once, then a bounded wait for the JVM to exit (killed after
            ``JVM_EXIT_SECONDS``).

            The package's ``__del__`` closes again at garbage collection; its newline to a JVM that is
            still exiting fails with a ``BrokenPipeError`` printed as an ignored exception (seen in
            ``make demo``'s output under load), so a second close does nothing.  The wait polls and
            never blocks: py4j's daemon ``ProcessConsumer`` thread holds the ``Popen``'s wait lock while
            it waits for the JVM, and at interpreter exit that thread is frozen holding it, so a
            blocking ``wait()`` from ``__del__`` deadlocked a process-pool worker's exit (CI hung)."""
            gateway = getattr(self, "_gateway", None)
            if gateway is None or getattr(self, "_glider_closed", False):  # never started, or closed
                return
            self._glider_closed = True
            java = gateway.java_process
            try:
                super().close()
            except (BrokenPipeError, ValueError):  # the JVM exited between the package's check and its write
                pass
            if finalizing():  # threads are frozen: nothing will reap the JVM now; it exits on its own
                return
            deadline = monotonic() + exit_seconds
            while java.poll() is None and monotonic() < deadline:
                sleep(0.02)
            if java.poll() is None:
                java.kill()  # reaped by py4j's thread; poll() reports it once that thread has

    return LeanScienceWorldEnv


def open_env(step_limit: int = 100):
    """A ScienceWorld environment in its own bounded JVM, stepping without the valid-action list."""
    with jvm_options():
        return _lean_env_class()("", envStepLimit=step_limit)


class ObservationFormatter:
    """What the agent sees after each step: the observation, plus where it is and what it carries.

    The full room description (``info["look"]``, ~500 characters) is added when
    the agent enters a room; afterwards only the room's name ("This room is
    called the kitchen.") — ``look around`` shows the whole room again.  The
    inventory is added when it changed.  Repeating the room description every
    step multiplied prompt and training tokens several times over while the
    step's own observation already says what changed.  One formatter per
    episode (``reset`` on a new one).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._room: str | None = None
        self._inv: str | None = None

    def __call__(self, obs: str, info: dict) -> str:
        parts = [obs.strip()]
        look = (info.get("look") or "").strip()
        if look and look not in obs:
            room = look.split(". ", 1)[0].rstrip(".") + "."
            parts.append(look if room != self._room else room)
            self._room = room
        inv = (info.get("inv") or "").strip()
        if inv and inv != self._inv and inv not in obs:
            parts.append(inv)
        self._inv = inv or self._inv
        return "\n".join(p for p in parts if p)


def bound_commands(combinations: list[dict], limit: int) -> list[str]:
    """At most ``limit`` distinct commands of ScienceWorld's combinations (``{"action", "obj_ids"}``),
    those over fewer objects first, returned sorted as ``get_valid_action_object_combinations()``
    returns them (grounding's preselection breaks ties by the list's order).

    The list grows with the square of the objects in view: the two-object templates (``connect A to
    B``, ``move A to B``, ``pour A in B``, ``use A on B``) made 2,584 of a kitchen's 2,827 commands, and
    one evaluation step held 4,793, over the server's limit.  Commands over one object or none (``go
    to``, ``open``, ``pick up``, ``focus on``, ``look at``) are what most steps need and are never
    dropped before a two-object one; among as many objects, the JVM's order decides."""
    arity: dict[str, int] = {}
    for c in combinations:  # a command listed twice (two referents, one name) counts once
        arity.setdefault(c["action"], len(c.get("obj_ids") or ()))
    kept = sorted(arity, key=arity.__getitem__)[:limit] if len(arity) > limit else arity
    return sorted(kept)


class ScienceWorld:
    """One ScienceWorld episode at a time: ``reset`` loads (task, variation), ``step`` plays."""

    def __init__(self, task_name: str, variation: int = 0, *, step_limit: int = 100,
                 simplification: str = "", env=None, gold: bool = False, grounded: bool = False,
                 max_valid_actions: int = MAX_VALID_ACTIONS):
        self.env = env if env is not None else open_env(step_limit)
        self.task_name = task_name
        self.variation = variation
        self.simplification = simplification
        self.gold = gold  # generate the gold path on reset (``gold_actions``): costs time, for replays only
        # each step's admissible commands (``EnvStep.valid_actions``): an extra JVM call per step
        self.grounded = grounded
        self.max_valid_actions = max_valid_actions
        self.task = ""
        self.score = 0.0
        self.observe = ObservationFormatter()

    def reset(self) -> EnvStep:
        self.env.load(self.task_name, self.variation, self.simplification, generateGoldPath=self.gold)
        obs, info = self.env.reset()
        self.observe.reset()
        self.task = self.env.get_task_description()
        self.score = float(info.get("score", 0))
        return EnvStep(observation=self.observe(obs, info), score=self.score / 100, info=info,
                       valid_actions=self.valid_actions())

    def step(self, action: str) -> EnvStep:
        obs, reward, done, info = self.env.step(action)
        score = float(info.get("score", 0))
        self.score = score
        return EnvStep(
            observation=self.observe(obs, info),
            reward=float(reward) / 100,
            done=bool(done) or score < 0,
            score=score / 100,
            valid_actions=[] if done else self.valid_actions(),
            info=info,
        )

    def valid_actions(self) -> list[str]:
        """The admissible commands now (ScienceWorld's valid action-object combinations), when ``grounded``,
        at most ``max_valid_actions`` of them (``bound_commands``).

        Asked for with their objects, as one JSON string from the JVM: the same commands as
        ``get_valid_action_object_combinations()``, whose py4j list of strings cost 2.6× as much per
        step (135 vs 53 ms over 96 gold-path steps, ``bench/grounding.py --rerecord``), and the objects say which to drop over the bound.  The
        JVM writes that JSON without escaping names; should it not parse, the plain list is sent, its
        first ``max_valid_actions`` entries."""
        if not self.grounded:
            return []
        try:
            combinations = self.env.get_valid_action_object_combinations_with_templates()
        except ValueError:  # json.JSONDecodeError: a name with a quote or a backslash in it
            return sorted(set(self.env.get_valid_action_object_combinations()))[: self.max_valid_actions]
        return bound_commands(combinations, self.max_valid_actions)

    def gold_actions(self) -> list[str]:
        """The gold path of the loaded variation (needs ``gold=True``)."""
        return list(self.env.get_gold_action_sequence())

    def variations(self, split: str) -> list[int]:
        self.env.load(self.task_name, 0)
        return list(getattr(self.env, SPLITS[split])())

    def close(self) -> None:
        self.env.close()
