"""The hierarchy controller: one environment step of the planner/executor state machine.

    need a subgoal?  (none yet | executor marked the last one done | c_max steps spent)
        yes -> planner(task, finished subgoals, observation) -> subgoal
    executor(task, subgoal, recent turns, observation) -> "action; true|false"

Two generic guards (settings, on by default; the evaluation measures them on and
off) turn degenerate generations into re-samples, seeded like every retry:

* a subgoal whose text repeats itself ("examine substance in inventory on
  substance in inventory on …": a run of words that immediately occurs again,
  or one word three times) is not accepted;
* an action equal to the previous one, when that one changed nothing (the
  observation now is the observation it was taken on), is not accepted: a
  tiny model that loops on a refused command would otherwise spend the episode
  on it.  A third setting, off by default until the tuning plan says otherwise,
  also counts as "changed nothing" an answer the same action gave before,
  with other steps between.

Neither looks at what the environment is: they compare text the episode
already holds.

The controller is pure logic over an ``EpisodeState``: it never mutates the
state it is given (a failed generation leaves the episode exactly as it was),
and it reaches the model only through ``generate``, so the same code runs on
vLLM, on transformers+peft, and on a scripted generator in unit tests.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from glider.server.policy.grounding import ActionSpace, ChooseFn, ground
from glider.server.policy.modes import ADAPTER_FOR_ROLE, Role
from glider.server.policy.prompts import (
    REACT_STOP,
    STOP,
    executor_prompt,
    flat_prompt,
    parse_action,
    parse_executor_output,
    parse_react,
    parse_subgoal,
    planner_prompt,
    sanitize,
)
from glider.server.policy.state import EpisodeState, EpisodeStatus, Segment, Turn
from glider.v1.rest import Sampling

# the ReAct style's thought gets this many tokens on top of the action's budget (executor_max_tokens):
# one sentence of a small model's reasoning
REACT_THOUGHT_TOKENS = 64


@dataclass(frozen=True)
class PolicyRequest:
    """One generation the policy needs from the engine."""

    prompt: str
    role: Role
    adapter: str  # adapter name the role maps to in this mode
    max_tokens: int
    temperature: float
    seed: int | None = None
    stop: tuple[str, ...] = (STOP,)
    top_p: float = 1.0


@dataclass(frozen=True)
class PolicyGeneration:
    text: str
    adapter_version: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


GenerateFn = Callable[[Sequence[PolicyRequest]], Awaitable[Sequence[PolicyGeneration]]]


@dataclass(frozen=True)
class HierarchyConfig:
    mode: str = "separate"
    c_max: int = 10
    history_window: int = 6
    plan_window: int = 8
    max_plan_attempts: int = 3
    max_action_attempts: int = 3
    planner_max_tokens: int = 32
    executor_max_tokens: int = 24
    temperature: float = 0.0
    top_p: float = 1.0
    retry_temperature: float = 0.8
    fallback_action: str = "look around"
    fallback_subgoal: str = "explore the surroundings"
    prompt_observation_chars: int = 600
    seed: int = 0
    guard_repeated_subgoal: bool = True
    guard_repeated_action: bool = True
    guard_repeated_answer: bool = False
    grounding_candidates: int = 16
    grounding_protected: tuple[str, ...] = ()  # command prefixes grounding never chooses
    prompt_style: str = "glider"  # flat mode: "instruct" / "react" for a base model prompted without adapters

    @classmethod
    def from_settings(cls, settings) -> HierarchyConfig:
        names = cls.__dataclass_fields__
        values = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
        values["mode"] = getattr(settings.mode, "value", settings.mode)
        values["grounding_protected"] = tuple(values.get("grounding_protected", ()))
        return cls(**values)


@dataclass
class StepDecision:
    """What one step produced; ``state`` is the new state to commit."""

    state: EpisodeState
    action: str | None
    subgoal: str | None
    new_subgoal: bool
    subgoal_done: bool
    adapter_versions: dict[str, str] = field(default_factory=dict)
    planner_calls: int = 0
    executor_calls: int = 0
    generated_tokens: dict[str, int] = field(default_factory=dict)  # role -> tokens
    fallback: bool = False
    # with admissible commands: the model's own action (None: unusable output) and whether the
    # action sent is a command the model's scores chose instead of it
    generated_action: str | None = None
    grounded: bool = False


def _fork(state: EpisodeState) -> EpisodeState:
    """A copy of ``state`` that a step may change while ``state`` stays as it was (a failed step changes
    nothing; the memory store still holds ``state``). Only what a step changes in place is copied: the
    lists it appends to, the open segment, the versions dict. Finished segments and turns are never
    changed once made, so both states share them; a deep copy of a long episode cost more than the
    rest of the Agent's step."""
    current = state.current
    return state.model_copy(update={
        "current": None if current is None else current.model_copy(update={"turns": list(current.turns)}),
        "finished": list(state.finished), "history": list(state.history),
        "adapter_versions": dict(state.adapter_versions)})


class PolicyController:
    def __init__(self, config: HierarchyConfig):
        if config.mode not in ADAPTER_FOR_ROLE:
            raise ValueError(f"unknown policy mode {config.mode!r}")
        self.config = config
        self.adapters = ADAPTER_FOR_ROLE[config.mode]

    @property
    def adapter_names(self) -> list[str]:
        """Adapters this mode needs loaded (deduplicated, stable order)."""
        return list(dict.fromkeys(self.adapters.values()))

    def new_state(self, episode_id: str, task: str, sampling: Sampling | None = None) -> EpisodeState:
        return EpisodeState(id=episode_id, task=sanitize(task), mode=self.config.mode, sampling=sampling)

    async def step(
        self,
        state: EpisodeState,
        observation: str,
        reward: float,
        done: bool,
        generate: GenerateFn,
        valid_actions: Sequence[str] | None = None,
        choose: ChooseFn | None = None,
    ) -> StepDecision:
        """One step; with ``valid_actions`` (the environment's admissible commands) the action sent is
        one of them (``grounding``), chosen by the model through ``choose`` when the generation is not."""
        space = ActionSpace(valid_actions) if valid_actions else None
        if space is not None and not space:
            space = None  # nothing but blanks: as if no list was sent
        new = _fork(state)
        new.last_reward = reward
        new.total_reward += reward
        new.updated_at = time.time()
        decision = StepDecision(state=new, action=None, subgoal=new.subgoal, new_subgoal=False,
                                subgoal_done=False)
        if done:
            # the environment ended the episode: close the open segment, answer no action
            if new.current is not None:
                self._close_segment(new)
            new.status = EpisodeStatus.finished
            return decision
        grounding = None if space is None else (space, choose)
        if self.config.mode == "flat":
            await self._flat_step(new, observation, generate, decision, grounding)
        else:
            await self._hierarchical_step(new, observation, generate, decision, grounding)
        new.step += 1
        return decision

    # -- hierarchical ---------------------------------------------------------
    def _needs_plan(self, state: EpisodeState) -> bool:
        seg = state.current
        return seg is None or seg.completed or len(seg.turns) >= self.config.c_max

    def _close_segment(self, state: EpisodeState) -> None:
        assert state.current is not None
        state.finished.append(state.current)
        del state.finished[: max(0, len(state.finished) - self.config.plan_window)]
        state.current = None

    async def _hierarchical_step(
        self, state: EpisodeState, observation: str, generate: GenerateFn, decision: StepDecision,
        grounding: tuple[ActionSpace, ChooseFn | None] | None = None,
    ) -> None:
        cfg = self.config
        if self._needs_plan(state):
            if state.current is not None:
                self._close_segment(state)
            prompt = planner_prompt(
                state.task, state.finished, observation, obs_limit=cfg.prompt_observation_chars
            )
            parse = _parse_subgoal_guarded if cfg.guard_repeated_subgoal else parse_subgoal
            subgoal, version = await self._sample(
                prompt, Role.planner, cfg.planner_max_tokens, cfg.max_plan_attempts,
                parse, state, generate, decision,
            )
            if subgoal is None:
                subgoal, decision.fallback = cfg.fallback_subgoal, True
            state.current = Segment(
                subgoal=subgoal,
                start_observation=sanitize(observation, cfg.prompt_observation_chars),
                adapter_version=version,
            )
            state.subgoal_count += 1
            decision.new_subgoal = True
        seg = state.current
        assert seg is not None
        if not decision.new_subgoal and seg.adapter_version is not None:
            decision.adapter_versions[self.adapters[Role.planner]] = seg.adapter_version
        turns = seg.turns[-cfg.history_window :] if cfg.history_window else []
        prompt = executor_prompt(
            state.task, seg.subgoal, turns, observation, obs_limit=cfg.prompt_observation_chars
        )
        banned = self._useless_repeat(state, observation)
        parsed, _ = await self._sample(
            prompt, Role.executor, cfg.executor_max_tokens, cfg.max_action_attempts,
            lambda text: _unless(_parse_executor_usable(text), banned), state, generate, decision,
        )
        action, subgoal_done = parsed if parsed is not None else (None, False)
        if grounding is not None:
            action = await self._ground(grounding, action, seg.subgoal, prompt, Role.executor, banned, decision)
        if action is None:
            action, decision.fallback = cfg.fallback_action, True
        seg.turns.append(
            Turn(observation=sanitize(observation, cfg.prompt_observation_chars), action=action,
                 done=subgoal_done)
        )
        seg.completed = subgoal_done
        decision.action, decision.subgoal, decision.subgoal_done = action, seg.subgoal, subgoal_done

    # -- flat -----------------------------------------------------------------
    async def _flat_step(
        self, state: EpisodeState, observation: str, generate: GenerateFn, decision: StepDecision,
        grounding: tuple[ActionSpace, ChooseFn | None] | None = None,
    ) -> None:
        cfg = self.config
        turns = state.history[-cfg.history_window :] if cfg.history_window else []
        prompt = flat_prompt(state.task, turns, observation, obs_limit=cfg.prompt_observation_chars,
                             style=cfg.prompt_style)
        banned = self._useless_repeat(state, observation)
        thought = None
        if cfg.prompt_style == "react":  # a thought, then the action: the thought has a budget of its own
            parsed, _ = await self._sample(
                prompt, Role.flat, cfg.executor_max_tokens + REACT_THOUGHT_TOKENS, cfg.max_action_attempts,
                lambda text: _unless(parse_react(text), banned), state, generate, decision, stop=REACT_STOP,
            )
            action, thought = parsed if parsed is not None else (None, None)
            # a chosen command follows the thought, where the model would have written its own
            choice_prompt = f"{prompt} {thought or ''}".rstrip() + "\nAction:"
        else:
            action, _ = await self._sample(
                prompt, Role.flat, cfg.executor_max_tokens, cfg.max_action_attempts,
                lambda text: _unless(parse_action(text), banned), state, generate, decision,
            )
            choice_prompt = prompt
        if grounding is not None:
            action = await self._ground(grounding, action, state.task, choice_prompt, Role.flat, banned, decision)
        if action is None:
            action, decision.fallback = cfg.fallback_action, True
        state.history.append(
            Turn(observation=sanitize(observation, cfg.prompt_observation_chars), action=action, thought=thought)
        )
        del state.history[: max(0, len(state.history) - cfg.history_window)]
        decision.action = action

    async def _ground(self, grounding, generated: str | None, query: str, prompt: str, role: Role,
                      banned: str | None, decision: StepDecision) -> str | None:
        """The admissible command to send for ``generated`` (see ``grounding``); records both."""
        space, choose = grounding
        decision.generated_action = generated
        adapter = self.adapters[role]

        async def chosen_by_model(*args):
            if choose is None:
                raise RuntimeError("grounding needs the executor's model to choose, and no chooser was given")
            return await choose(*args)

        chosen = await ground(space, generated, query=query, prompt=prompt, adapter=adapter,
                              flat=role is Role.flat, limit=self.config.grounding_candidates,
                              choose=chosen_by_model, banned=banned, protected=self.config.grounding_protected)
        decision.grounded = chosen.grounded
        if chosen.adapter_version is not None:
            decision.adapter_versions[adapter] = chosen.adapter_version
        return chosen.action

    # -- guards ---------------------------------------------------------------------
    def _useless_repeat(self, state: EpisodeState, observation: str) -> str | None:
        """The previous action, when it changed nothing: its observation came back (``guard_repeated_action``),
        or it answered what it answered the last time it was taken (``guard_repeated_answer``: a refused
        "go to kitchen" says the same every time, whatever came between)."""
        cfg = self.config
        if not (cfg.guard_repeated_action or cfg.guard_repeated_answer):
            return None
        if state.mode == "flat":
            turns = state.history
        else:  # the executor's turns since the previous subgoal began: enough to see a loop, and on hand
            turns = [*(state.finished[-1].turns if state.finished else []),
                     *(state.current.turns if state.current is not None else [])]
        if not turns:
            return None
        now, last = sanitize(observation, cfg.prompt_observation_chars), turns[-1]
        if cfg.guard_repeated_action and now == last.observation:
            return last.action
        if cfg.guard_repeated_answer and any(
                before.action == last.action and after.observation == now
                for before, after in zip(turns, turns[1:], strict=False)):
            return last.action
        return None

    # -- sampling with bounded retries ------------------------------------------
    async def _sample(self, prompt, role, max_tokens, attempts, parse, state, generate, decision,
                      stop: tuple[str, ...] = (STOP,)):
        """Generate until ``parse`` accepts the text, at most ``attempts`` times.

        The first attempt uses the episode's temperature (its own ``sampling``, else the
        server's); retries sample (a greedy retry would only repeat the same unusable text)
        with a seed derived from the episode so a replay is reproducible: from the episode's
        own seed when it gave one (the same whatever its id), else from the server's seed
        and the episode id.
        """
        cfg = self.config
        own = state.sampling
        adapter = self.adapters[role]
        first_temperature = own.temperature if own and own.temperature is not None else cfg.temperature
        top_p = own.top_p if own and own.top_p is not None else cfg.top_p
        episode_key = f"episode-seed:{own.seed}" if own and own.seed is not None else f"{cfg.seed}/{state.id}"
        version = None
        for attempt in range(attempts):
            temperature = first_temperature if attempt == 0 else cfg.retry_temperature
            seed = None
            if temperature > 0:
                seed = zlib.crc32(f"{episode_key}/{state.step}/{role.value}/{attempt}".encode())
            request = PolicyRequest(prompt=prompt, role=role, adapter=adapter, max_tokens=max_tokens,
                                    temperature=temperature, seed=seed, top_p=top_p, stop=stop)
            (gen,) = await generate([request])
            if role is Role.planner:
                state.planner_calls += 1
                decision.planner_calls += 1
            else:
                state.executor_calls += 1
                decision.executor_calls += 1
            decision.generated_tokens[role.value] = (
                decision.generated_tokens.get(role.value, 0) + gen.completion_tokens
            )
            version = gen.adapter_version
            if version is not None:
                state.adapter_versions[adapter] = version
                decision.adapter_versions[adapter] = version
            value = parse(gen.text)
            if value is not None:
                return value, version
        return None, version


def _parse_executor_usable(text: str) -> tuple[str, bool] | None:
    action, done = parse_executor_output(text)
    return None if action is None else (action, done)


def _unless(parsed, banned: str | None):
    """``parsed`` (an action, or an (action, done) pair), unless its action is the banned repeat."""
    if parsed is None or banned is None:
        return parsed
    action = parsed[0] if isinstance(parsed, tuple) else parsed
    return None if action == banned else parsed


def repeats_itself(text: str) -> bool:
    """Degenerate text: a run of two or more words immediately followed by the same run, or one word
    three times in a row ("a substance called air a substance called air a …", "jay jay jay")."""
    words = text.lower().replace(",", " ").split()
    n = len(words)
    for size in range(1, n // 2 + 1):
        for i in range(n - 2 * size + 1):
            if words[i:i + size] == words[i + size:i + 2 * size] and (
                    size > 1 or words[i + 1:i + 2] == words[i + 2:i + 3]):
                return True
    return False


def _parse_subgoal_guarded(text: str) -> str | None:
    subgoal = parse_subgoal(text)
    return None if subgoal is None or repeats_itself(subgoal) else subgoal
