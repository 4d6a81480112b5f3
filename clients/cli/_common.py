"""What every command group of the CLI shares: the console, settings, extras, config defaults."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time

import typer
from rich.console import Console
from rich.markup import escape

console = Console()

#: each extra, and modules whose presence shows it is installed
EXTRAS = {"server": ("fastapi", "uvicorn", "pydantic_settings"),
          "train": ("torch", "transformers", "peft", "pydantic_settings"),
          "envs": ("scienceworld", "numpy", "pydantic_settings"),
          "smollm": ("gguf",)}


def require(*extras: str, command: str, modules: tuple[str, ...] | None = None) -> None:
    """Exit with the pip command to run when a command needs an extra this install lacks (the base
    install carries only the SDK and its contract), instead of a traceback deep in an import.
    ``modules``: what the command really imports, when that is less than the whole extra. Called at
    the top of each command (not in a group callback, which would also refuse ``--help``)."""
    missing = [e for e in extras if any(importlib.util.find_spec(m) is None for m in (modules or EXTRAS[e]))]
    if missing:
        install = escape(f"pip install 'glider[{','.join(missing)}]'")  # [..] is not rich markup here
        console.print(f"[red]error:[/red] `glider {command}` needs the {', '.join(missing)} "
                      f"extra{'s' if len(missing) > 1 else ''}: {install}", soft_wrap=True)  # copyable: one line
        raise typer.Exit(2)


def settings(**overrides):
    """The server's settings (GLIDER_* variables) with the options that were given on top."""
    from glider.server.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def split_list(spec: str) -> list[str]:
    """A comma-separated option ("boil,melt") as a list; empty means "all"."""
    return [t for t in spec.split(",") if t]


def given(config, **values):
    """``config`` with the options that were given: an option left at None keeps the config's own
    default, so each default is written once, in its dataclass."""
    return dataclasses.replace(config, **{k: v for k, v in values.items() if v is not None})


def default_help(text: str, value) -> str:
    """An option's help that shows the default its config dataclass holds."""
    return f"{text} [default: {value}]" if text else f"[default: {value}]"


def adapter_tag(adapters: dict[str, str]) -> str:
    """A run directory per set of served adapter versions: a retrained agent is a new run, not a resume."""
    return "_".join(f"{name}-{version}" for name, version in sorted(adapters.items()))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(client, server, timeout: float = 600.0):
    """Until the server subprocess answers /readyz (or exits, or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise typer.Exit(f"server exited with {server.returncode}")
        health = client.ready()
        if health is not None:
            return health
        time.sleep(0.5)
    raise typer.Exit("server did not become ready")
