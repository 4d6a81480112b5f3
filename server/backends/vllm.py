"""vLLM backend: ``AsyncLLM`` with ``enable_lora``; one ``LoRARequest`` per adapter name and version.

Every ``generate`` call submits its specs to the engine as independent
requests and awaits them together, so concurrent episodes meet in vLLM's
continuous batching.  A new adapter version gets a fresh LoRA id (vLLM caches
adapters by id), so requests already running finish on the version they
started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from glider.server.backends.base import (
    AdapterHandle,
    Backend,
    BackendError,
    GenerationResult,
    GenerationSpec,
    ScoreResult,
    current_episode,
)
from glider.server.backends.vllm_busy_wait import ENV as BUSY_WAIT_ENV
from glider.server.settings import Settings

log = logging.getLogger(__name__)

TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")


def _preload_tcmalloc() -> None:
    """Run vLLM's CPU engine processes on tcmalloc, as vLLM's CPU guide asks.

    Under glibc malloc the engine's memory kept growing on variable-length batches (bench/soak.py:
    3.3 -> 5.8 GiB in a 6-minute soak at 64 episodes) while with tcmalloc it levels off within 3 minutes,
    and steps ran 1.37x faster. The engine core and its workers are started as new interpreters, so
    LD_PRELOAD set here reaches them; this process keeps its allocator.
    """
    if "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    lib = next((p for p in TCMALLOC if os.path.exists(p)), None)
    if lib is None:
        log.warning("libtcmalloc_minimal.so.4 not found (Debian: libtcmalloc-minimal4): the CPU engine's memory "
                    "grows under glibc malloc on long runs")
        return
    os.environ["LD_PRELOAD"] = ":".join(filter(None, [lib, os.environ.get("LD_PRELOAD")]))


def omp_threads_bind(engine_cpus: str) -> str | None:
    """GLIDER_ENGINE_CPUS as vLLM-CPU's VLLM_CPU_OMP_THREADS_BIND, or None to leave vLLM's (or the
    operator's own variable) in place: 'all' is every core this process may run on."""
    if engine_cpus == "auto":
        return None
    if engine_cpus == "all":
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return engine_cpus


def _is_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch always present with vllm
        return False


#: KV-cache block on CPU machines unless GLIDER_BLOCK_SIZE says otherwise (GPUs keep vLLM's own)
CPU_BLOCK_SIZE = 32


class VLLMBackend(Backend):
    kind = "vllm"

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings
        self._engine = None
        self._lora_ids = itertools.count(1)
        self._requests: dict[str, object] = {}  # adapter name -> serving LoRARequest
        self._inflight: Counter[int] = Counter()  # LoRA id -> requests running on it
        self._retired: set[int] = set()  # replaced ids, removed once their requests finish
        self._names: dict[str, int] = {}  # "name@version" -> LoRA id, for introspection
        self._trace = None  # GLIDER_TRACE_REQUESTS: the served workload, one JSON line per request

    async def start(self) -> None:
        # the CPU build sizes its KV cache from this variable, read at engine creation
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(self.settings.kv_cache_gib))))
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        cuda = _is_cuda()
        if not cuda:
            _preload_tcmalloc()
        busy_wait = s.engine_busy_wait_s if s.engine_busy_wait_s is not None else (None if cuda else 0.002)
        if busy_wait is not None:  # read by the vllm_busy_wait plugin in the engine's spawned processes
            os.environ[BUSY_WAIT_ENV] = str(busy_wait)
        bind = None if cuda else omp_threads_bind(s.engine_cpus)
        if bind is not None:  # read when the engine spawns its worker
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        # the prefix cache reuses whole blocks only; vLLM-CPU's own 128 wastes most of a 200-400-token prompt
        # (bench/hier_vs_flat.py, bench/concurrency.py: 32 serves 1.35-1.45x the env-steps/s)
        block_size = s.block_size if s.block_size is not None else (None if cuda else CPU_BLOCK_SIZE)
        # float32 is the CPU default; on a GPU let vLLM pick the model's dtype unless asked
        dtype = "auto" if cuda and s.dtype == "float32" else s.dtype
        args = AsyncEngineArgs(
            model=str(s.model_dir()),
            tokenizer=str(s.model_dir()),
            dtype=dtype,
            enable_lora=True,
            max_loras=self.lora_capacity,
            max_lora_rank=s.max_lora_rank,
            max_model_len=s.max_model_len,
            enforce_eager=not cuda,
            enable_prefix_caching=s.enable_prefix_caching,
            block_size=block_size,
            gpu_memory_utilization=s.gpu_memory_utilization,
            seed=s.seed,
            disable_log_stats=True,
        )
        if s.trace_requests is not None:  # before the engine: a bad path fails the start at once
            Path(s.trace_requests).parent.mkdir(parents=True, exist_ok=True)
            # opened once at start (not per request), held until close
            self._trace = open(s.trace_requests, "a", buffering=1, encoding="utf-8")  # noqa: SIM115, ASYNC230
        log.info("starting vLLM engine on %s", s.model_dir())
        self._engine = AsyncLLM.from_engine_args(args)
        self.ready = True

    @property
    def lora_capacity(self) -> int:
        """GLIDER_MAX_LORAS, raised to what the profiles want: vLLM batches requests of at most this many
        adapters together and sizes their GPU (or CPU) buffers at start."""
        return max(self.settings.max_loras, self.lora_slots or 0)

    async def load_adapter(self, name: str, version: str, path: Path) -> AdapterHandle:
        from vllm.lora.request import LoRARequest

        engine = self._require_engine()
        lora_id = next(self._lora_ids)
        request = LoRARequest(f"{name}@{version}", lora_id, str(path))
        try:
            added = await engine.add_lora(request)
        except Exception as exc:
            raise BackendError(f"vLLM could not load adapter {name}@{version}: {exc}") from exc
        if added is False:
            raise BackendError(f"vLLM did not load adapter {name}@{version}")
        self._names[request.lora_name] = lora_id
        previous = self.adapters.get(name)
        handle = AdapterHandle(name=name, version=version, path=Path(path), engine_id=lora_id)
        # switch atomically: new requests take the new LoRARequest from here on
        self._requests[name] = request
        self.adapters[name] = handle
        if previous is not None and previous.engine_id not in self._live_ids():
            # requests that started on the old version finish on it; its slot is
            # freed when the last of them is done
            self._retired.add(previous.engine_id)
            await self._release(engine, previous.engine_id)
        log.info("adapter %s@%s loaded as LoRA id %d", name, version, lora_id)
        return handle

    async def unload_adapter(self, name: str) -> None:
        handle = self.adapters.pop(name, None)
        self._requests.pop(name, None)
        if handle is not None and self._engine is not None:
            self._retired.add(handle.engine_id)  # freed now, or by its last running request
            await self._release(self._engine, handle.engine_id)

    async def _release(self, engine, lora_id: int) -> None:
        if lora_id in self._retired and self._inflight[lora_id] == 0:
            self._retired.discard(lora_id)
            del self._inflight[lora_id]
            self._names = {n: i for n, i in self._names.items() if i != lora_id}
            await engine.remove_lora(lora_id)

    async def engine_adapters(self) -> list[str]:
        engine = self._require_engine()
        ids = await engine.list_loras()
        return sorted(name for name, lora_id in self._names.items() if lora_id in ids)

    @property
    def failure(self) -> str | None:
        # vLLM's monitor thread flags the engine dead as soon as its core process exits (killed,
        # out of memory); the client cannot be restarted, so the server must be
        if self._engine is not None and self._engine.errored:
            return f"vLLM engine failed: {self._engine.dead_error}"
        return None

    def _live_ids(self) -> set[int]:
        return {h.engine_id for h in self.adapters.values()}

    def _require_engine(self):
        if self._engine is None:
            raise BackendError("vLLM engine is not started")
        if self.failure is not None:
            self.ready = False
            raise BackendError(self.failure)
        return self._engine

    def _serving(self, adapter: str | None):
        """The adapter's handle and the LoRARequest new requests run on (None, None: the base model)."""
        handle = self._handle(adapter)
        return handle, (self._requests[adapter] if handle is not None else None)

    async def generate(self, specs: Sequence[GenerationSpec]) -> list[GenerationResult]:
        engine = self._require_engine()
        return list(await asyncio.gather(*(self._one(engine, spec) for spec in specs)))

    async def _run(self, engine, prompt, params, lora):
        """One engine request to its final output, counted on its LoRA id while it runs (a replaced
        adapter version is removed from the engine once its last request is done)."""
        final = None
        if lora is not None:
            self._inflight[lora.lora_int_id] += 1
        try:
            async for out in engine.generate(prompt, params, uuid.uuid4().hex, lora_request=lora):
                final = out
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BackendError(f"vLLM generation failed: {exc}") from exc
        finally:
            if lora is not None:
                self._inflight[lora.lora_int_id] -= 1
                if lora.lora_int_id in self._retired:
                    await self._release(engine, lora.lora_int_id)
        if final is None or not final.outputs:
            raise BackendError("vLLM returned no output")
        return final

    async def _one(self, engine, spec: GenerationSpec) -> GenerationResult:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        handle, lora = self._serving(spec.adapter)
        params = SamplingParams(
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            seed=spec.seed,
            stop=list(spec.stop),
            output_kind=RequestOutputKind.FINAL_ONLY,
            structured_outputs=StructuredOutputsParams(choice=list(spec.choices)) if spec.choices else None,
        )
        started = time.monotonic()
        final = await self._run(engine, spec.prompt, params, lora)
        completion = final.outputs[0]
        result = GenerationResult(
            text=completion.text,
            adapter_version=handle.version if handle else None,
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=len(completion.token_ids),
            cached_tokens=final.num_cached_tokens or 0,
            stop_reason=completion.stop_reason if isinstance(completion.stop_reason, str) else None,
        )
        if self._trace is not None:
            self._write_trace(started, spec, lora, result)
        return result

    def _write_trace(self, started: float, spec: GenerationSpec, lora, result: GenerationResult) -> None:
        """One line of GLIDER_TRACE_REQUESTS; a trace that cannot be written is dropped, never the step."""
        try:
            self._trace.write(json.dumps({
                "start": started, "end": time.monotonic(), "episode": current_episode.get(), "prompt": spec.prompt,
                "adapter": lora.lora_name if lora else None, "adapter_path": lora.lora_path if lora else None,
                "max_tokens": spec.max_tokens, "temperature": spec.temperature, "top_p": spec.top_p,
                "seed": spec.seed, "stop": list(spec.stop), "choices": list(spec.choices or ()) or None,
                "text": result.text, "stop_reason": result.stop_reason,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "cached_tokens": result.cached_tokens}) + "\n")
        except OSError as exc:
            log.error("request trace %s cannot be written (%s): tracing stops", self.settings.trace_requests, exc)
            trace, self._trace = self._trace, None
            with contextlib.suppress(OSError):
                trace.close()

    async def score(self, prompt: str, continuations: Sequence[str], adapter: str | None) -> ScoreResult:
        """Each continuation's log-likelihood after ``prompt``, from next-token logprobs alone.

        Prompt logprobs would score a continuation in one request, but vLLM 0.32's LoRA logits processor
        fails on them (the engine dies: vllm-project/vllm#29955; where it runs, an lm_head LoRA's delta is
        left out: #51594).  So the continuations' tokens form a trie, and every trie node (the prompt and
        a prefix of some continuation) is one one-token request that asks for the logprobs of exactly the
        tokens that follow it there (``logprob_token_ids``: raw logprobs, before any sampling processor).
        All nodes go to the engine at once and meet in one batch; each reuses the prompt's blocks from
        the prefix cache (the generation that preceded this call put them there), so the cost is the
        candidates' few tokens, not the prompt once per candidate.  Tokenised as the transformers
        backend scores them: the prompt as the engine tokenises it, each continuation on its own."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS, RequestOutputKind

        engine = self._require_engine()
        handle, lora = self._serving(adapter)
        tokenizer = engine.get_tokenizer()
        head = tokenizer(prompt)["input_ids"]
        tails = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        following: dict[tuple[int, ...], set[int]] = {}  # trie node -> the tokens after it
        for tail in tails:
            for t, token in enumerate(tail):
                following.setdefault(tuple(tail[:t]), set()).add(token)
        requests = [(node, ids[i:i + MAX_LOGPROB_TOKEN_IDS]) for node, tokens in following.items()
                    for ids in [sorted(tokens)] for i in range(0, len(ids), MAX_LOGPROB_TOKEN_IDS)]
        outputs = await asyncio.gather(*(
            self._run(engine, TokensPrompt(prompt_token_ids=head + list(node)),
                      SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(chunk),
                                     output_kind=RequestOutputKind.FINAL_ONLY), lora)
            for node, chunk in requests))
        logprob: dict[tuple[tuple[int, ...], int], float] = {}
        for (node, chunk), out in zip(requests, outputs, strict=True):
            read = out.outputs[0].logprobs
            if not read:
                raise BackendError("vLLM returned no logprobs for a scored continuation")
            logprob.update(((node, token), read[0][token].logprob) for token in chunk)
        scores = [sum(logprob[tuple(tail[:t]), token] for t, token in enumerate(tail)) for tail in tails]
        return ScoreResult(logprobs=scores, tokens=[len(t) for t in tails],
                           adapter_version=handle.version if handle else None)

    async def close(self) -> None:
        self.ready = False
        if self._trace is not None:
            trace, self._trace = self._trace, None
            with contextlib.suppress(OSError):
                trace.close()
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
