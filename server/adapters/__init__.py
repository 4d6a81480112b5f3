"""Adapter registry on disk: ``<root>/<name>/<version>/`` with peft files and a manifest."""

from glider.server.adapters.registry import (
    AdapterNotFound,
    AdapterRegistry,
    AdapterVersion,
    InvalidAdapter,
)

__all__ = ["AdapterNotFound", "AdapterRegistry", "AdapterVersion", "InvalidAdapter"]
