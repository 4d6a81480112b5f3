"""Publish a trained adapter to the registry the server watches (atomically; see the registry module)."""

from __future__ import annotations

from pathlib import Path

from glider.server.adapters.registry import AdapterRegistry, AdapterVersion, base_model_identity


def publish_adapter(registry_root: Path, name: str, adapter_dir: Path, model_dir: Path, *,
                    stage: str, metrics: dict | None = None, keep: int | None = None,
                    make_current: bool = True, reuse_identical: bool = False) -> AdapterVersion:
    """Copy ``adapter_dir`` (peft files) in as the next version of ``name``, trained on ``model_dir``.

    The manifest records the base model's identity so a server on another
    backbone refuses it; ``keep`` prunes old versions (never current or its parent).
    ``reuse_identical`` makes publishing idempotent, for resumable stages: when the newest version of
    ``name`` is this very adapter from the same stage (a resumed run that finds its training done
    publishes it again), that version is returned, made current if asked, and no version is added.
    """
    registry = AdapterRegistry(registry_root)
    base_model = base_model_identity(model_dir)
    versions = registry.versions(name) if reuse_identical else []  # only a resumable stage reads the newest
    newest = registry.get(name, versions[-1]) if versions else None
    if (newest is not None and newest.manifest.get("stage") == stage
            and newest.manifest.get("base_model") == base_model and registry.holds_same(newest, adapter_dir)):
        published = newest
        if make_current:
            registry.set_current(name, newest.version)
    else:
        published = registry.publish(
            name, adapter_dir, make_current=make_current,
            metadata={"base_model": base_model, "stage": stage, "metrics": metrics or {}},
        )
    if keep is not None:
        registry.prune(name, keep)
    return published
