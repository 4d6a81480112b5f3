"""A vLLM general plugin (entry point ``vllm.general_plugins``): seeded sampling that survives partial prefills on CPU.

When a prompt is prefilled over several engine steps, vLLM 0.32's model runner samples a token for
it at each partial step, throws the token away, and rewinds the request's seeded random generator
(``_bookkeeping_sync``: ``gen.set_offset(gen.get_offset() - 4)``).  Offsets exist only on CUDA
generators: on CPU the call raises "CPU Generator does not use offset" and the engine dies.  Our
server sends seeded requests (the repetition guards re-sample with a seed; clients may set a
per-episode seed), and partial prefills come whenever many long prompts arrive in one step (a flat
evaluation at 24 episodes in flight killed its engine twice).  This plugin keeps CPU generators
out of that rewind: a seeded request then draws one step further along its stream than on a GPU,
which changes which sample it gets, not whether sampling is seeded.  GPU generators are rewound
as vLLM does.
"""

from __future__ import annotations


def keep_cpu_generators_out_of_the_rewind() -> None:
    import numpy as np
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._bookkeeping_sync
    if getattr(original, "_glider_cpu_generators", False):  # loading twice is harmless
        return

    def bookkeeping_sync(self, *args, **kwargs):
        generators = self.input_batch.generators
        discarded = np.nonzero(self.discard_request_mask.np[: self.input_batch.num_reqs])[0]
        held = {int(i): generators.pop(int(i)) for i in discarded
                if int(i) in generators and generators[int(i)].device.type == "cpu"}
        try:
            return original(self, *args, **kwargs)
        finally:
            generators.update(held)

    bookkeeping_sync._glider_cpu_generators = True
    GPUModelRunner._bookkeeping_sync = bookkeeping_sync
