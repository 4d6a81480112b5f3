"""Publish a trained adapter to the registry the server watches (atomically; see the registry module)."""

from __future__ import annotations

from pathlib import Path

from glider.server.adapters.registry import AdapterRegistry, AdapterVersion, base_model_identity


def publish_adapter(registry_root: Path, name: str, adapter_dir: Path, model_dir: Path, *,
                    stage: str, metrics: dict | None = None, keep: int | None = None,
                    make_current: bool = True) -> AdapterVersion:
    """Copy ``adapter_dir`` (peft files) in as the next version of ``name``, trained on ``model_dir``.

    The manifest records the base model's identity so a server on another
    backbone refuses it; ``keep`` prunes old versions (never current or its parent).
    """
    registry = AdapterRegistry(registry_root)
    published = registry.publish(
        name, adapter_dir, make_current=make_current,
        metadata={"base_model": base_model_identity(model_dir), "stage": stage, "metrics": metrics or {}},
    )
    if keep is not None:
        registry.prune(name, keep)
    return published
