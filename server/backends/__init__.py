"""Generation backends behind one async protocol: vLLM (AsyncLLM + LoRARequest) and transformers+peft."""

from glider.server.backends.base import (
    AdapterHandle,
    Backend,
    BackendError,
    GenerationResult,
    GenerationSpec,
    create_backend,
)

__all__ = [
    "AdapterHandle",
    "Backend",
    "BackendError",
    "GenerationResult",
    "GenerationSpec",
    "create_backend",
]
