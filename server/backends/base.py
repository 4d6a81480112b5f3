"""The backend protocol every engine implements.

``generate`` takes a batch of specs (prompt, adapter name, sampling) and
returns one result per spec, each naming the adapter version that produced it.
Callers may call ``generate`` concurrently from many episodes: a backend
batches them itself (vLLM's continuous batching; the HF backend's gathering
queue) — nothing in front of it serialises requests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glider.server.settings import Settings


# The episode whose step is generating (set by the Agent around a step): a backend's request trace
# names it, so a replay keeps each episode's requests in their order.  None outside a step.
current_episode: ContextVar[str | None] = ContextVar("glider_current_episode", default=None)


class BackendError(RuntimeError):
    """The engine failed to produce a generation (mapped to 503 by the transports)."""


@dataclass(frozen=True)
class GenerationSpec:
    prompt: str
    adapter: str | None  # adapter name ("planner", "executor", ...); None = the bare backbone
    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ("\n",)
    # the generation must be one of these strings (greedy decoding constrained to them); None: free
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    adapter_version: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache already held
    stop_reason: str | None = None  # the stop string that ended the text (cut off before it); None: another end


@dataclass(frozen=True)
class ScoreResult:
    """Continuations of one prompt scored by the model: per continuation Σ log p(token | prompt and
    the continuation's earlier tokens), and how many tokens that sum is over."""

    logprobs: list[float]
    tokens: list[int]
    adapter_version: str | None


@dataclass(frozen=True)
class AdapterHandle:
    """An adapter loaded in the engine: its name, version and where its files are."""

    name: str
    version: str
    path: Path
    engine_id: int = 0


class Backend(ABC):
    kind: str = "base"

    def __init__(self) -> None:
        self.adapters: dict[str, AdapterHandle] = {}
        self.ready = False
        # LoRA slots the server's profiles want (set before ``start``); engines that size their
        # adapter slots at start take at least this many.  None: the settings' own
        self.lora_slots: int | None = None

    @property
    def lora_capacity(self) -> int | None:
        """Adapters the engine serves in one batch (None: no fixed bound)."""
        return None

    @property
    def failure(self) -> str | None:
        """Why the engine can no longer serve, once it cannot (its process died); None while it can.
        Checked by the server's watchdog and ``/healthz``: a dead engine is not recoverable in place."""
        return None

    @abstractmethod
    async def start(self) -> None:
        """Load the model; ``ready`` becomes True when it can serve."""

    @abstractmethod
    async def generate(self, specs: Sequence[GenerationSpec]) -> list[GenerationResult]: ...

    @abstractmethod
    async def score(self, prompt: str, continuations: Sequence[str], adapter: str | None) -> ScoreResult:
        """The log-likelihood of each continuation after ``prompt`` under ``adapter`` (grounding).
        The prompt is tokenised as ``generate`` tokenises it, each continuation on its own after it."""

    @abstractmethod
    async def load_adapter(self, name: str, version: str, path: Path) -> AdapterHandle:
        """Load ``path`` as adapter ``name`` at ``version`` and make it the serving one."""

    async def unload_adapter(self, name: str) -> None:
        """Stop serving adapter ``name`` (a deleted profile's); requests already running on it finish.
        Engines that hold adapters in memory override this to free them."""
        self.adapters.pop(name, None)

    async def close(self) -> None:
        self.ready = False

    async def engine_adapters(self) -> list[str]:
        """``name@version`` of every adapter resident in the engine (serving or draining)."""
        return sorted(f"{h.name}@{h.version}" for h in self.adapters.values())

    def adapter_versions(self) -> dict[str, str]:
        return {name: handle.version for name, handle in self.adapters.items()}

    def _handle(self, name: str | None) -> AdapterHandle | None:
        if name is None:
            return None
        try:
            return self.adapters[name]
        except KeyError:
            raise BackendError(f"adapter {name!r} is not loaded") from None


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """``text`` up to the stop string that completes first (as vLLM stops: the earliest end, ties in the
    list's order), and that stop string; the whole text and None when none occurs."""
    best, end = None, len(text) + 1
    for s in stop:
        i = text.find(s) if s else -1
        if i != -1 and i + len(s) < end:
            best, end = s, i + len(s)
    return (text, None) if best is None else (text[: end - len(best)], best)


def create_backend(settings: Settings) -> Backend:
    if settings.backend.value == "vllm":
        from glider.server.backends.vllm import VLLMBackend

        return VLLMBackend(settings)
    from glider.server.backends.hf import HFBackend

    return HFBackend(settings)
