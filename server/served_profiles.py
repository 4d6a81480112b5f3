"""The agent profiles a server serves: each one's policy, its adapters in the engine, and its health.

``ProfileStore`` (``glider.server.profiles``) is what is on disk; this is what runs.  Each profile gets its
own ``PolicyController`` (its mode and generation settings) and ``AdapterManager`` (its adapters, hot-swapped
and rolled back on their own).  A profile that fails to load (a missing or unfit adapter) is *broken*: its
episodes are refused with 503, and no other profile is touched.  The default profile is the server's: if
it cannot load, the server does not start, as before profiles existed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from glider.server.adapters.manager import AdapterManager
from glider.server.adapters.registry import AdapterNotFound, InvalidAdapter
from glider.server.backends.base import Backend, BackendError
from glider.server.metrics import Metrics
from glider.server.policy.controller import HierarchyConfig, PolicyController
from glider.server.profiles import DEFAULT, Profile, ProfileNotFound, ProfileSpec, ProfileStore

log = logging.getLogger(__name__)


class ProfileUnavailable(RuntimeError):
    """The profile exists but cannot serve now (its adapters failed to load)."""


@dataclass
class ServedProfile:
    profile: Profile
    policy: PolicyController
    adapters: AdapterManager
    error: str | None = None  # why its adapters did not load (it heals when the trainer publishes fitting ones)

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def ready(self) -> bool:
        return self.adapters.ready()

    def state(self) -> dict:
        """What ``/readyz`` and the admin API report for it."""
        return {"mode": self.profile.mode.value, "adapters": self.adapters.serving(),
                "state": "ready" if self.ready else ("broken" if self.error else "loading"),
                **({"error": self.error} if self.error and not self.ready else {})}

    def engine_name(self, adapter: str | None) -> str | None:
        """The engine's name of one of this profile's adapters; None: the bare backbone (no adapters)."""
        return self.profile.serving_name(adapter) if adapter is not None and self.profile.adapters else None


class ProfileSet:
    def __init__(self, store: ProfileStore, backend: Backend, server: HierarchyConfig, *, model_dir,
                 max_rank: int, metrics: Metrics, poll_s: float):
        self.store = store
        self.backend = backend
        self.server = server
        self.model_dir = model_dir
        self.max_rank = max_rank
        self.metrics = metrics
        self.poll_s = poll_s
        self.served: dict[str, ServedProfile] = {}
        self._lock = asyncio.Lock()  # one create / change / delete at a time
        self.served[DEFAULT] = self._build(store.get(DEFAULT))

    def _build(self, profile: Profile) -> ServedProfile:
        policy = PolicyController(profile.hierarchy(self.server))
        manager = AdapterManager(self.store.registry(profile.name), self.backend, profile.adapter_names,
                                 model_dir=self.model_dir, max_rank=self.max_rank, metrics=self.metrics,
                                 poll_s=self.poll_s, profile=profile.name, serving_name=profile.serving_name)
        return ServedProfile(profile, policy, manager)

    @property
    def default(self) -> ServedProfile:
        return self.served[DEFAULT]

    def get(self, name: str | None) -> ServedProfile:
        """The served profile ``name`` (None: the default); unknown names are ``ProfileNotFound``."""
        try:
            return self.served[name or DEFAULT]
        except KeyError:
            raise ProfileNotFound(f"no profile named {name!r} (profiles: {', '.join(self.served)})") from None

    def serving(self, name: str | None) -> ServedProfile:
        """Like ``get``, for a new episode: a profile that cannot serve is ``ProfileUnavailable``."""
        served = self.get(name)
        if not served.ready:
            raise ProfileUnavailable(f"profile {served.name!r} cannot serve now: "
                                     f"{served.error or 'its adapters are loading'}")
        return served

    async def _start(self, served: ServedProfile, *, required: bool = False) -> None:
        """Load the profile's adapters and watch its registry.  A profile that fails is broken, not fatal
        (unless ``required``): the watcher loads its adapters when fitting ones are published."""
        try:
            await served.adapters.start()
            served.error = None
        except (InvalidAdapter, AdapterNotFound, BackendError) as exc:
            served.error = str(exc)
            if required:
                raise
            log.error("profile %s cannot serve: %s (its episodes are refused; other profiles serve)",
                      served.name, exc)
        served.adapters.start_watching()

    def lora_slots(self) -> int:
        """Engine adapter slots for the stored profiles: one per adapter of each, plus headroom for the
        largest profile to swap all its adapters at once (an old version serves its running requests
        while the new one loads)."""
        sizes = []
        for name in self.store.names():
            try:
                sizes.append(len(self.store.get(name).adapter_names))
            except (ValueError, LookupError):
                continue
        return sum(sizes) + max(sizes, default=0)

    def check_capacity(self) -> None:
        """Say so when the profiles now served hold more adapters than the engine batches together."""
        capacity = self.backend.lora_capacity
        wanted = sum(len(p.profile.adapter_names) for p in self.served.values())
        if capacity is not None and wanted > capacity:
            log.warning("the profiles serve %d adapters and the engine batches at most %d: a step whose adapter "
                        "is not in the running batch waits for a slot (vLLM swaps adapters between batches); "
                        "restart the server to size the slots for every profile, or raise GLIDER_MAX_LORAS",
                        wanted, capacity)

    async def start(self) -> None:
        """Load every stored profile; the default one's failure fails the server's start."""
        await self._start(self.default, required=True)
        for name in self.store.names():
            if name == DEFAULT:
                continue
            try:
                profile = self.store.get(name)
            except (ValueError, LookupError) as exc:
                log.error("profile %s is not served: %s", name, exc)
                continue
            self.served[name] = self._build(profile)
            await self._start(self.served[name])
        self.check_capacity()

    async def put(self, name: str, spec: ProfileSpec) -> ServedProfile:
        """Create or change a profile: stored, then served (a changed one replaces the old at once;
        its running episodes go on under the new settings, each keeping its profile)."""
        async with self._lock:
            if name == DEFAULT:  # the server's own profile must serve before it is stored
                served = self._build(Profile(name=DEFAULT, **spec.model_dump()))
                try:
                    await self._start(served, required=True)
                except (InvalidAdapter, AdapterNotFound, BackendError):
                    await served.adapters.close()
                    raise
                self.store.put(name, spec)
            else:
                served = self._build(self.store.put(name, spec))
                await self._start(served)
            profile = served.profile
            old = self.served.get(name)
            self.served[name] = served
            self.check_capacity()
            if old is not None:
                await old.adapters.close()
                stale = set(old.profile.adapter_names) - set(profile.adapter_names)
                for adapter in stale:  # adapters the new definition no longer uses leave the engine
                    await self.backend.unload_adapter(old.profile.serving_name(adapter))
            return served

    async def delete(self, name: str) -> None:
        async with self._lock:
            self.store.delete(name)
            served = self.served.pop(name, None)
            if served is not None:
                await served.adapters.unload()

    async def close(self) -> None:
        for served in self.served.values():
            await served.adapters.close()
