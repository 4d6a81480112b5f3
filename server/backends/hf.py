"""transformers + peft backend: the embedded / fallback engine, also what the trainer uses.

Concurrent ``generate`` calls are gathered by a small queue for up to
``hf_batch_wait_ms`` (or ``hf_max_batch`` requests) and run as one batched
``generate`` with peft's per-row ``adapter_names``, so different adapters
share a batch.  Rows with different sampling settings go in separate batches;
a sampled batch is seeded from its first request (per-row seeds are a vLLM
feature).  Generation runs in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from glider.server.backends.base import (
    AdapterHandle,
    Backend,
    BackendError,
    GenerationResult,
    GenerationSpec,
    ScoreResult,
    truncate_at_stop,
)
from glider.server.settings import Settings

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class _Pending:
    spec: GenerationSpec
    peft_name: str
    version: str | None
    future: asyncio.Future


class HFBackend(Backend):
    kind = "hf"

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings
        self.model = None
        self.tokenizer = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._peft_names: dict[str, str] = {}  # adapter name -> serving peft adapter name
        self._lock = asyncio.Lock()  # adapter loading vs. batched generate on the model
        self._pending: Counter[str] = Counter()  # peft name -> queued or running requests
        self._retired: set[str] = set()  # replaced peft names, deleted once unused

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="hf-batcher")
        self.ready = True

    @property
    def failure(self) -> str | None:
        # the batcher is the only consumer of the queue: without it every request would wait forever
        worker = self._worker
        if worker is None or not worker.done() or not self.ready:
            return None
        error = None if worker.cancelled() else worker.exception()
        return f"HF batch worker stopped: {error!r}" if error else "HF batch worker stopped"

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.settings.model_dir()
        log.info("loading %s with transformers", path)
        dtype = getattr(torch, self.settings.dtype, torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.model.eval()

    async def load_adapter(self, name: str, version: str, path: Path) -> AdapterHandle:
        if self.model is None:
            raise BackendError("HF model is not loaded")
        peft_name = f"{name}@{version}"
        async with self._lock:
            try:
                await asyncio.to_thread(self._load_peft, peft_name, Path(path))
            except Exception as exc:
                raise BackendError(f"peft could not load adapter {peft_name}: {exc}") from exc
            previous = self._peft_names.get(name)
            self._peft_names[name] = peft_name
            handle = AdapterHandle(name=name, version=version, path=Path(path))
            self.adapters[name] = handle
            if previous is not None and previous != peft_name:
                # requests queued on the old version still run on it
                self._retired.add(previous)
                self._delete_if_unused(previous)
        log.info("adapter %s loaded into peft", peft_name)
        return handle

    async def unload_adapter(self, name: str) -> None:
        async with self._lock:
            self.adapters.pop(name, None)
            peft_name = self._peft_names.pop(name, None)
            if peft_name is not None:
                self._retired.add(peft_name)  # deleted now, or when its queued requests have run
                self._delete_if_unused(peft_name)

    async def engine_adapters(self) -> list[str]:
        return sorted(getattr(self.model, "peft_config", {}) or {})

    def _delete_if_unused(self, peft_name: str) -> None:
        if peft_name in self._retired and self._pending[peft_name] == 0:
            self._retired.discard(peft_name)
            del self._pending[peft_name]
            self.model.delete_adapter(peft_name)

    def _load_peft(self, peft_name: str, path: Path) -> None:
        from peft import PeftModel

        if not hasattr(self.model, "peft_config"):
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=peft_name)
        else:
            self.model.load_adapter(path, adapter_name=peft_name)
        self.model.eval()

    async def generate(self, specs: Sequence[GenerationSpec]) -> list[GenerationResult]:
        if not self.ready or self._queue is None:
            raise BackendError("HF backend is not started")
        if self.failure is not None:
            raise BackendError(self.failure)
        if any(spec.choices for spec in specs):
            return [await self._choice(spec) if spec.choices else (await self.generate([spec]))[0] for spec in specs]
        loop = asyncio.get_running_loop()
        pending = []
        for spec in specs:
            handle = self._handle(spec.adapter)
            peft_name = self._peft_names[spec.adapter] if handle else BASE
            pending.append(_Pending(spec, peft_name, handle.version if handle else None,
                                    loop.create_future()))
        for item in pending:
            self._pending[item.peft_name] += 1
            self._queue.put_nowait(item)
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            for item in pending:
                self._pending[item.peft_name] -= 1

    async def _choice(self, spec: GenerationSpec) -> GenerationResult:
        """A generation constrained to ``spec.choices``: transformers has no structured decoding here, so the
        most likely choice (exact, where greedy constrained decoding approximates it)."""
        scored = await self.score(spec.prompt, spec.choices, spec.adapter)
        best = max(range(len(spec.choices)), key=lambda i: (scored.logprobs[i], -i))
        return GenerationResult(text=spec.choices[best], adapter_version=scored.adapter_version, prompt_tokens=0,
                                completion_tokens=scored.tokens[best])

    async def score(self, prompt: str, continuations: Sequence[str], adapter: str | None) -> ScoreResult:
        """One batched forward pass over prompt + each continuation (right-padded)."""
        if not self.ready:
            raise BackendError("HF backend is not started")
        handle = self._handle(adapter)
        peft_name = self._peft_names[adapter] if handle else BASE
        self._pending[peft_name] += 1
        try:
            async with self._lock:
                logprobs, tokens = await asyncio.to_thread(self._score_batch, prompt, list(continuations), peft_name)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"HF scoring failed: {exc}") from exc
        finally:
            self._pending[peft_name] -= 1
        return ScoreResult(logprobs=logprobs, tokens=tokens, adapter_version=handle.version if handle else None)

    def _score_batch(self, prompt: str, continuations: list[str], peft_name: str) -> tuple[list[float], list[int]]:
        import torch

        tok = self.tokenizer
        head = tok(prompt)["input_ids"]  # as ``generate`` tokenises a prompt
        tails = [tok(c, add_special_tokens=False)["input_ids"] for c in continuations]
        width = len(head) + max(len(t) for t in tails)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(tails), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, tail in enumerate(tails):
            row = head + tail
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        kwargs = {"adapter_names": [peft_name] * len(tails)} if hasattr(self.model, "peft_config") else {}
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
        # token t is predicted at position t - 1
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        out = []
        for i, tail in enumerate(tails):
            out.append(float(logp[i, len(head) - 1:len(head) - 1 + len(tail)].sum()))
        return out, [len(t) for t in tails]

    async def _run(self) -> None:
        assert self._queue is not None
        wait = self.settings.hf_batch_wait_ms / 1000
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + wait
            while len(batch) < self.settings.hf_max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for item in batch:
                s = item.spec
                groups.setdefault((s.temperature, s.top_p, s.max_tokens, s.stop), []).append(item)
            for items in groups.values():
                live = [p for p in items if not p.future.done()]
                if not live:
                    continue
                try:
                    async with self._lock:
                        results = await asyncio.to_thread(self._generate_batch, live)
                except Exception as exc:  # one failed batch fails its requests, not the worker
                    log.exception("HF batch failed")
                    for p in live:
                        if not p.future.done():
                            p.future.set_exception(BackendError(f"HF generation failed: {exc}"))
                    continue
                for p, r in zip(live, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(r)
            for name in list(self._retired):  # no batch runs here: safe to drop unused versions
                self._delete_if_unused(name)

    def _generate_batch(self, items: list[_Pending]) -> list[GenerationResult]:
        import torch

        spec = items[0].spec
        tok = self.tokenizer
        enc = tok([p.spec.prompt for p in items], return_tensors="pt", padding=True)
        kwargs = dict(
            max_new_tokens=spec.max_tokens,
            pad_token_id=tok.pad_token_id,
            stop_strings=list(spec.stop) or None,
            tokenizer=tok,
        )
        if spec.temperature > 0:
            if spec.seed is not None:
                torch.manual_seed(spec.seed)
            kwargs.update(do_sample=True, temperature=spec.temperature, top_k=0, top_p=spec.top_p)
        else:
            kwargs.update(do_sample=False)
        if hasattr(self.model, "peft_config"):
            kwargs["adapter_names"] = [p.peft_name for p in items]
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        results = []
        for i, p in enumerate(items):
            new_ids = out[i, prompt_len:]
            text = tok.decode(new_ids, skip_special_tokens=True)
            text, stop_reason = truncate_at_stop(text, p.spec.stop)
            # count the tokens up to and including the stop, not the padding after it
            n = int((new_ids != tok.pad_token_id).sum()) if tok.pad_token_id is not None else len(new_ids)
            results.append(GenerationResult(
                text=text, adapter_version=p.version,
                prompt_tokens=int(enc["attention_mask"][i].sum()), completion_tokens=n, stop_reason=stop_reason,
            ))
        return results

    async def close(self) -> None:
        self.ready = False
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
