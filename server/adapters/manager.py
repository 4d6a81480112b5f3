"""Hot-swap: keep the engine serving the registry's ``current`` adapters, with validation and rollback.

A swap of adapter ``name`` to ``version``:
  1. resolve and validate it (files and checksums, base model identity, rank ≤
     the engine's max, supported target modules) — off the event loop;
  2. load it into the engine under a fresh id (vLLM: a new ``LoRARequest``);
  3. switch name → version in the backend (one assignment: requests that
     started earlier keep the version they started with, new ones get the new);
  4. on an admin call, move the registry's ``current`` pointer too, so a
     restart or another replica serves the same version.
A failure at 1 or 2 leaves the old version serving and is reported (admin
response, log, ``glider_adapter_swaps_total{result="rejected"}``).

Triggers: the watcher polls each ``current`` pointer (one ``readlink`` per
adapter every ``adapter_poll_s``; works on any shared volume, where inotify
does not), a publish notice (``refresh``: the trainer's word, pushed to every
replica, see ``push``), and the admin API.  The versions served before stay in a history
so ``rollback`` can go back to the previous one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from glider.server.adapters.registry import (
    AdapterNotFound,
    AdapterRegistry,
    InvalidAdapter,
    base_model_identity,
)
from glider.server.backends.base import Backend, BackendError
from glider.server.metrics import Metrics

log = logging.getLogger(__name__)

#: linear layers a LoRA may target in both engines (Llama-style names)
SUPPORTED_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@dataclass
class SwapResult:
    name: str
    version: str
    previous: str | None
    seconds: float
    changed: bool = True


@dataclass
class _Slot:
    serving: str | None = None
    history: list[str] = field(default_factory=list)  # versions served before, oldest first
    seen_current: str | None = None  # last `current` the watcher acted on
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AdapterManager:
    """One agent profile's adapters (``names``, as its registry calls them).  In the engine each is
    ``serving_name(name)``: the default profile's keep their names, another profile's are prefixed, so
    two profiles' planners are two engine adapters (``glider.server.profiles``)."""

    def __init__(self, registry: AdapterRegistry, backend: Backend, names: list[str], *,
                 model_dir, max_rank: int, metrics: Metrics, poll_s: float = 1.0, history: int = 8,
                 profile: str = "default", serving_name: Callable[[str], str] | None = None):
        self.registry = registry
        self.backend = backend
        self.names = list(names)
        self.profile = profile
        self.serving_name = serving_name or (lambda name: name)
        self.max_rank = max_rank
        self.metrics = metrics
        self.poll_s = poll_s
        self.history_len = history
        self.base_model = base_model_identity(model_dir)
        self.slots = {name: _Slot() for name in self.names}
        self._watcher: asyncio.Task | None = None

    def serving(self) -> dict[str, str | None]:
        return {name: slot.serving for name, slot in self.slots.items()}

    def serving_versions(self) -> dict[str, str]:
        """Adapter -> the version the engine serves, for the adapters that are loaded."""
        return {name: version for name, version in self.serving().items() if version is not None}

    def _slot(self, name: str) -> _Slot:
        self.registry.check_name(name)
        try:
            return self.slots[name]
        except KeyError:
            raise AdapterNotFound(f"this server does not serve an adapter named {name!r} "
                                  f"(it serves {', '.join(self.names)})") from None

    # -- swaps --------------------------------------------------------------------
    async def load(self, name: str, version: str | None = None, *, make_current: bool = False,
                   reason: str = "admin") -> SwapResult:
        slot = self._slot(name)
        async with slot.lock:
            t0 = time.perf_counter()
            try:
                result = await self._load_locked(name, slot, version, make_current, t0)
            except (InvalidAdapter, AdapterNotFound, BackendError) as exc:
                self.metrics.adapter_swaps.labels(self.profile, name, "rejected").inc()
                log.error("adapter %s: %s swap to %s rejected: %s; %s keeps serving",
                          self.serving_name(name), reason, version or "current", exc, slot.serving)
                raise
            if result.changed:
                self.metrics.adapter_swaps.labels(self.profile, name, "loaded").inc()
                self.metrics.adapter_swap_seconds.observe(result.seconds)
                log.info("adapter %s: %s -> %s (%s, %.0f ms)", self.serving_name(name), result.previous, result.version,
                         reason, result.seconds * 1000)
            return result

    async def _load_locked(self, name, slot, version, make_current, t0) -> SwapResult:
        version = version or self.registry.current_version(name)
        if version == slot.serving:
            if make_current:
                self.registry.set_current(name, version)
            return SwapResult(name, version, slot.serving, time.perf_counter() - t0, changed=False)
        adapter = self.registry.get(name, version)
        await asyncio.to_thread(self.registry.validate, adapter, base_model=self.base_model,
                                max_rank=self.max_rank, supported_modules=SUPPORTED_MODULES)
        try:
            await self.backend.load_adapter(self.serving_name(name), version, adapter.path)
        except BackendError as exc:
            if self.backend.ready:  # the engine is fine: it refused this adapter
                raise InvalidAdapter(f"adapter {name}@{version}: the engine refused it: {exc}") from exc
            raise
        previous = slot.serving
        if previous is not None:
            slot.history.append(previous)
            del slot.history[: max(0, len(slot.history) - self.history_len)]
        slot.serving = version
        if make_current:
            self.registry.set_current(name, version)
        if previous is not None:
            self.metrics.adapter_version.remove(self.profile, name, previous)
        self.metrics.adapter_version.labels(self.profile, name, version).set(1)
        return SwapResult(name, version, previous, time.perf_counter() - t0)

    async def rollback(self, name: str) -> SwapResult:
        """Serve the version served before the current one (and point ``current`` at it)."""
        slot = self._slot(name)
        if not slot.history:
            raise AdapterNotFound(f"adapter {name!r} has no previous version to roll back to")
        target = slot.history[-1]
        result = await self.load(name, target, make_current=True, reason="rollback")
        # the rolled-back-from version must not become the next rollback target
        async with slot.lock:
            if slot.history and slot.history[-1] == result.previous:
                slot.history.pop()
            if slot.history and slot.history[-1] == target:
                slot.history.pop()
        self.metrics.adapter_swaps.labels(self.profile, name, "rolled_back").inc()
        return result

    # -- startup and the watcher ------------------------------------------------------
    async def start(self) -> None:
        """Load every adapter's current version; a failure here fails the server's start."""
        for name in self.names:
            result = await self.load(name, reason="startup")
            self.slots[name].seen_current = result.version

    def start_watching(self) -> None:
        if self.poll_s > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="adapter-watcher")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            for name, slot in self.slots.items():
                await self.check(name, slot)

    async def check(self, name: str, slot: _Slot | None = None) -> None:
        """Act on a moved ``current`` pointer once (a rejected version is not retried until it moves again)."""
        slot = slot or self._slot(name)
        try:
            current = self.registry.current_version(name)
        except (AdapterNotFound, InvalidAdapter, OSError):
            return
        if current == slot.seen_current:
            return
        slot.seen_current = current
        try:
            await self.load(name, current, reason="watcher")
        except (InvalidAdapter, AdapterNotFound, BackendError):
            pass  # logged and counted by load(); the old version keeps serving

    async def refresh(self, names: tuple[str, ...] | None = None) -> dict[str, str | None]:
        """Check ``names`` (None: all) now, as the watcher's next poll would; what is served then."""
        for name in names if names is not None else self.names:
            await self.check(name)
        return self.serving()

    def ready(self) -> bool:
        """Every adapter of the profile is loaded in the engine."""
        return all(self.serving_name(n) in self.backend.adapters for n in self.names)

    async def unload(self) -> None:
        """Take the profile's adapters out of the engine (a deleted profile); requests already running
        on them finish first."""
        await self.close()
        for name, slot in self.slots.items():
            async with slot.lock:
                await self.backend.unload_adapter(self.serving_name(name))
                if slot.serving is not None:
                    self.metrics.adapter_version.remove(self.profile, name, slot.serving)
                slot.serving = None

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
            self._watcher = None
