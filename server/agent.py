"""The Agent service: episodes, the hierarchical policy and the engine, behind both transports.

REST and gRPC handlers are thin: they validate their wire format and call
these methods; every rule about episodes (creation, leases, finished
episodes, limits) lives here, so both transports behave the same.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from glider.server.adapters.manager import AdapterManager
from glider.server.adapters.registry import AdapterRegistry
from glider.server.backends.base import Backend, BackendError, GenerationSpec, current_episode
from glider.server.errors import EpisodeFinished, InvalidInput, ProfileMismatch, StepMismatch
from glider.server.metrics import Metrics
from glider.server.policy import (
    EpisodeState,
    EpisodeStatus,
    HierarchyConfig,
    PolicyController,
    PolicyRequest,
)
from glider.server.policy.controller import PolicyGeneration
from glider.server.policy.grounding import best_scored, chosen_option, deciding_prefixes
from glider.server.policy.state import LastAnswer
from glider.server.profiles import ProfileSpec, ProfileStore
from glider.server.served_profiles import ProfileSet, ServedProfile
from glider.server.settings import GroundingMethod, Settings, StoreKind
from glider.server.store.base import EpisodeStore, StoreFull, StoreUnavailable
from glider.server.store.recorder import TrajectoryRecorder
from glider.v1.rest import EPISODE_ID_PATTERN, MAX_SEED, PROFILE_PATTERN, TASK_PATTERN, Sampling

log = logging.getLogger(__name__)

EPISODE_ID_RE = re.compile(EPISODE_ID_PATTERN)
PROFILE_RE = re.compile(PROFILE_PATTERN)
TASK_RE = re.compile(TASK_PATTERN)  # the REST schema's own patterns: gRPC requests get the same checks


def _request_digest(observation: str, reward: float, done: bool, score: float | None,
                    valid_actions: Sequence[str] | None = None) -> str:
    """Identifies a step's request, so a retry is told apart from a different step at that index."""
    key = (observation, reward, done, score) + ((tuple(valid_actions),) if valid_actions else ())
    return hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()


@dataclass
class StepResult:
    episode_id: str
    step: int
    action: str | None
    subgoal: str | None
    new_subgoal: bool
    subgoal_done: bool
    subgoal_index: int
    done: bool
    adapter_versions: dict[str, str] = field(default_factory=dict)
    fallback: bool = False
    latency_ms: float = 0.0
    grounded: bool = False  # the action is an admissible command chosen by the model's scores
    generated_action: str | None = None  # the executor's own action when admissible commands were sent
    profile: str = "default"  # the agent profile that played it

    def answer(self) -> dict:
        """What a retry of the step is answered with: every field but the latency, versions copied
        (dataclasses.asdict's recursive deep copy cost a tenth of the Agent's step)."""
        out = {name: getattr(self, name) for name in _ANSWER_FIELDS}
        out["adapter_versions"] = dict(self.adapter_versions)
        return out


_ANSWER_FIELDS = tuple(f.name for f in fields(StepResult) if f.name != "latency_ms")


class Agent:
    def __init__(self, settings: Settings, backend: Backend, store: EpisodeStore,
                 registry: AdapterRegistry, metrics: Metrics | None = None,
                 recorder: TrajectoryRecorder | None = None):
        self.settings = settings
        self.backend = backend
        self.store = store
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.recorder = recorder
        # the registry's root is the default profile (the server's mode and settings); other agent
        # profiles live beside its adapters (glider.server.profiles)
        server_policy = HierarchyConfig.from_settings(settings)
        self.profiles = ProfileSet(
            ProfileStore(registry.root, ProfileSpec(mode=server_policy.mode)), backend, server_policy,
            model_dir=settings.model_dir(), max_rank=settings.max_lora_rank, metrics=self.metrics,
            poll_s=settings.adapter_poll_s)
        self.swap_channel = None
        if settings.swap_push and settings.store is StoreKind.redis:
            from glider.server.adapters.push import SwapChannel

            self.swap_channel = SwapChannel(settings.redis_url.get_secret_value(), prefix=settings.redis_prefix,
                                            timeout_s=settings.redis_timeout_s, on_notice=self._on_notice)

    # the default profile's policy and adapters: what a server without profiles serves
    @property
    def policy(self) -> PolicyController:
        return self.profiles.default.policy

    @property
    def mode(self) -> str:
        return self.policy.config.mode

    @property
    def adapters(self) -> AdapterManager:
        return self.profiles.default.adapters

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        if self.recorder is not None:
            self.recorder.start()
        try:  # a store that is down now may be up by the first step: say so, do not die
            await self.store.check()
        except StoreUnavailable as exc:
            log.warning("%s; steps will answer 503 until it is reachable", exc)
        self.backend.lora_slots = self.profiles.lora_slots()
        try:
            await self.backend.start()
            await self.profiles.start()
        except BaseException:
            # a start that fails (the default profile has no adapters) closes what it opened: an engine
            # process left running keeps the interpreter waiting for it at exit, so the process never ends
            try:
                await self.close()
            except Exception:  # noqa: BLE001 - the start's own error is the one to report
                log.exception("closing after a failed start")
            raise
        if self.swap_channel is not None:
            self.swap_channel.start()

    async def close(self) -> None:
        try:
            if self.swap_channel is not None:
                await self.swap_channel.close()
            await self.profiles.close()
            await self.backend.close()
            await self.store.close()
        finally:  # the trainer reads only sealed logs: seal them even if an engine shutdown fails
            if self.recorder is not None:
                self.recorder.close()

    # -- pushed swaps -----------------------------------------------------------------
    async def adapters_published(self, profile: str | None, adapters: tuple[str, ...] | None
                                 ) -> tuple[dict[str, str | None], int]:
        """The trainer has published ``adapters`` (None: any) of ``profile``: swap to them now, and pass
        the word on to the other replicas. The versions served after, and how many replicas heard."""
        served = self.profiles.get(profile)
        serving = await served.adapters.refresh(adapters)
        notified = 0
        if self.swap_channel is not None:
            notified = await self.swap_channel.publish(served.name, adapters)
        return serving, notified

    async def _on_notice(self, notice) -> None:
        if notice.profile in self.profiles.served:  # a profile this replica has not loaded yet: its poll
            await self.profiles.served[notice.profile].adapters.refresh(notice.adapters)

    @property
    def ready(self) -> bool:
        """Ready while the engine and the default profile are (another profile's state is its own)."""
        return self.backend.ready and self.backend.failure is None and self.profiles.default.ready

    # -- episodes -----------------------------------------------------------------
    def _check_task(self, task: str | None) -> str:
        if task is None or not TASK_RE.search(task):
            raise InvalidInput("task is required to start an episode")
        if len(task) > self.settings.max_task_chars:
            raise InvalidInput(f"task is longer than {self.settings.max_task_chars} characters")
        return task

    def _check_sampling(self, sampling: Sampling | None) -> Sampling | None:
        """The contract's ranges (gRPC is not checked by pydantic) and the server's bound."""
        if sampling is None:
            return None
        t, p, seed = sampling.temperature, sampling.top_p, sampling.seed
        if t is not None and not 0.0 <= t <= self.settings.episode_max_temperature:
            raise InvalidInput(f"sampling.temperature must be between 0 and {self.settings.episode_max_temperature} "
                               "on this server")
        if p is not None and not 0.0 < p <= 1.0:
            raise InvalidInput("sampling.top_p must be in (0, 1]")
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InvalidInput(f"sampling.seed must be between 0 and {MAX_SEED} (2^53 - 1)")
        return sampling

    async def create_episode(self, task: str | None, episode_id: str | None = None,
                             sampling: Sampling | None = None, profile: str | None = None) -> EpisodeState:
        """A new episode of agent ``profile`` (None: the default), which it keeps to its end."""
        task = self._check_task(task)
        profile = self.check_profile(profile)
        sampling = self._check_sampling(sampling)
        if episode_id is None:
            episode_id = uuid.uuid4().hex
        elif not EPISODE_ID_RE.match(episode_id):
            raise InvalidInput("episode_id must be 1-128 characters of [A-Za-z0-9_.:-]")
        served = self.profiles.serving(profile)
        state = served.policy.new_state(episode_id, task, sampling)
        state.profile = served.name
        try:
            await self.store.create(state)
        except StoreFull:
            self.metrics.errors.labels("too_many_episodes").inc()
            raise
        return state

    @staticmethod
    def check_profile(profile: str | None) -> str | None:
        """The contract's pattern (gRPC is not checked by pydantic); an empty name is no name."""
        if profile and not PROFILE_RE.match(profile):
            raise InvalidInput("profile must be 1-64 characters of [a-z0-9_-], starting with a letter")
        return profile or None

    async def get_episode(self, episode_id: str) -> EpisodeState:
        return await self.store.get(episode_id)

    async def delete_episode(self, episode_id: str) -> None:
        await self.store.delete(episode_id)

    # -- one environment step -------------------------------------------------------
    def _check_valid_actions(self, valid_actions: Sequence[str] | None) -> list[str] | None:
        """The step's admissible commands within this server's limits; an empty list is no list."""
        if not valid_actions:
            return None
        s = self.settings
        if len(valid_actions) > s.max_valid_actions:
            raise InvalidInput(f"valid_actions holds {len(valid_actions)} commands; this server takes at most "
                               f"{s.max_valid_actions}")
        for i, command in enumerate(valid_actions):
            if not isinstance(command, str):
                raise InvalidInput(f"valid_actions[{i}] is not a string")
            if len(command) > s.max_valid_action_chars:
                raise InvalidInput(f"valid_actions[{i}] is longer than {s.max_valid_action_chars} characters")
        return list(valid_actions)

    async def act(self, *, observation: str, episode_id: str | None = None, task: str | None = None,
                  reward: float = 0.0, done: bool = False, step: int | None = None,
                  score: float | None = None, sampling: Sampling | None = None,
                  valid_actions: Sequence[str] | None = None, profile: str | None = None) -> StepResult:
        """One step.  ``valid_actions``: the environment's admissible commands now; the action
        answered is then one of them (see ``glider.server.policy.grounding``).  ``profile``: the agent
        profile of an episode this step starts (a later step may name the episode's own, nothing else)."""
        t0 = time.perf_counter()
        if len(observation) > self.settings.max_observation_chars:
            raise InvalidInput(
                f"observation is longer than {self.settings.max_observation_chars} characters")
        valid_actions = self._check_valid_actions(valid_actions)
        profile = self.check_profile(profile)
        created = episode_id is None
        if created:
            episode_id = (await self.create_episode(task, sampling=sampling, profile=profile)).id
        else:
            if sampling is not None:
                raise InvalidInput("sampling is set when an episode starts, not on a later step")
            if task is not None:
                self._check_task(task)
        digest = _request_digest(observation, reward, done, score, valid_actions)
        state = await self.store.acquire(episode_id)
        committed = False
        try:
            last = state.last_answer
            if step is not None and last is not None and step == last.result["step"] and last.digest == digest:
                self.metrics.replays.inc()  # a retry of the step just answered: the same answer
                return StepResult(**last.result, latency_ms=(time.perf_counter() - t0) * 1000)
            if state.status is EpisodeStatus.finished:
                raise EpisodeFinished(f"episode {episode_id!r} is finished; start a new one")
            if step is not None and step != state.step:
                raise StepMismatch(f"episode {episode_id!r} is at step {state.step}, not {step}")
            if profile is not None and profile != state.profile:
                raise ProfileMismatch(f"episode {episode_id!r} belongs to profile {state.profile!r}, not {profile!r}")
            served = self.profiles.serving(state.profile)
            episode_token = current_episode.set(episode_id)
            try:
                decision = await served.policy.step(
                    state, observation, reward, done, lambda requests: self._generate(requests, served),
                    valid_actions=valid_actions,
                    choose=lambda prompt, adapter, options: self._choose(prompt, adapter, options, served))
            except BackendError:
                raise
            except Exception as exc:  # an engine failure of any kind: state is untouched
                log.exception("step failed for episode %s", episode_id)
                raise BackendError(f"generation failed: {exc}") from exc
            finally:
                current_episode.reset(episode_token)
            new = decision.state
            result = StepResult(
                episode_id=episode_id,
                step=state.step,
                action=decision.action,
                subgoal=decision.subgoal,
                new_subgoal=decision.new_subgoal,
                subgoal_done=decision.subgoal_done,
                subgoal_index=max(0, new.subgoal_count - 1),
                done=new.status is EpisodeStatus.finished,
                adapter_versions=decision.adapter_versions,
                fallback=decision.fallback,
                grounded=decision.grounded,
                generated_action=decision.generated_action if valid_actions else None,
                profile=served.name,
            )
            new.last_answer = LastAnswer(digest=digest, result=result.answer())
            await self.store.commit(new, state.version)
            committed = True
        finally:
            if not committed:
                await self.store.release(episode_id)
                if created:  # the client never learnt this id: leave nothing behind
                    await self.store.delete(episode_id)
        result.latency_ms = (time.perf_counter() - t0) * 1000
        m = self.metrics
        if decision.action is not None:
            m.steps.labels(served.name, new.mode).inc()
        if decision.new_subgoal:
            m.subgoals.labels(served.name).inc()
        if decision.fallback:
            m.fallbacks.labels(served.name).inc()
        if valid_actions:
            m.grounded_steps.labels(served.name, "grounded" if decision.grounded else "admissible").inc()
        if self.recorder is not None:
            self.recorder.record({
                "time": time.time(), "episode_id": episode_id, "task": new.task, "mode": new.mode,
                "profile": served.name,
                "step": result.step, "observation": observation, "reward": reward, "done": done,
                "score": score,
                "action": result.action, "subgoal": result.subgoal, "new_subgoal": result.new_subgoal,
                "subgoal_done": result.subgoal_done, "subgoal_index": result.subgoal_index,
                "total_reward": new.total_reward, "fallback": result.fallback,
                "adapter_versions": result.adapter_versions, "latency_ms": round(result.latency_ms, 3),
                "sampling": new.sampling.model_dump(exclude_none=True) if new.sampling else None,
                **({"generated_action": result.generated_action, "grounded": result.grounded,
                    "valid_actions": len(valid_actions)} if valid_actions else {}),
            })
        return result

    async def _choose(self, prompt: str, adapter: str, continuations: Sequence[str],
                      served: ServedProfile) -> tuple[int, str | None]:
        """The continuation of ``prompt`` the executor's model prefers (grounding): the most likely one,
        or the one greedy decoding constrained to them produces (``grounding_method``)."""
        t0 = time.perf_counter()
        adapter = served.engine_name(adapter)
        if self.settings.grounding_method is GroundingMethod.constrained:
            # the generation stops as soon as what it wrote decides the command (bench/grounding.py)
            deciding = deciding_prefixes(continuations)
            stop = tuple(p for p in deciding if p) if self.settings.grounding_early_stop else ()
            (gen,) = await self.backend.generate([GenerationSpec(
                prompt=prompt, adapter=adapter, max_tokens=self.settings.grounding_max_tokens, temperature=0.0,
                stop=stop, choices=tuple(continuations))])
            best = chosen_option(continuations, deciding, gen.text, gen.stop_reason)
            version = gen.adapter_version
        else:
            scored = await self.backend.score(prompt, continuations, adapter)
            best, version = best_scored(scored.logprobs), scored.adapter_version
        self.metrics.grounding_seconds.observe(time.perf_counter() - t0)
        return best, version

    async def _generate(self, requests: Sequence[PolicyRequest], served: ServedProfile) -> list[PolicyGeneration]:
        specs = [
            GenerationSpec(prompt=r.prompt, adapter=served.engine_name(r.adapter), max_tokens=r.max_tokens,
                           temperature=r.temperature, top_p=r.top_p, seed=r.seed, stop=r.stop)
            for r in requests
        ]
        results = await self.backend.generate(specs)
        out = []
        for r, g in zip(requests, results, strict=True):
            labels = (served.name, r.role.value)
            self.metrics.generations.labels(*labels).inc()
            self.metrics.generated_tokens.labels(*labels).inc(g.completion_tokens)
            self.metrics.prompt_tokens.labels(*labels).inc(g.prompt_tokens)
            self.metrics.cached_prompt_tokens.labels(*labels).inc(g.cached_tokens)
            out.append(PolicyGeneration(text=g.text, adapter_version=g.adapter_version,
                                        prompt_tokens=g.prompt_tokens,
                                        completion_tokens=g.completion_tokens))
        return out
