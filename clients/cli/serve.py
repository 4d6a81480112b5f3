"""``glider serve``: the agent server (REST + gRPC).

Every field of ``glider.server.settings.Settings`` is a flag here as well as a ``GLIDER_*`` variable
(``--c-max 8`` = ``GLIDER_C_MAX=8``); a flag given on the command line wins. The flags are made from
the settings model, so a new setting is a new flag with nothing written here.
"""

from __future__ import annotations

import enum
import importlib.util
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated

import typer
from glider.clients.cli._common import require, settings, setup_logging


def _flag_type(annotation):
    """The type a flag parses into: the field's type without ``None``; secrets are read as text."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
    if getattr(annotation, "__name__", "") in ("SecretStr",):
        return str
    if annotation in (int, float, str, bool, Path) or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return annotation
    return str


def _parameters() -> list[inspect.Parameter]:
    """One keyword option per setting (none when the server extra is missing: the command then says so)."""
    if importlib.util.find_spec("pydantic_settings") is None:
        return []
    from glider.server.settings import Settings

    params = []
    for name, field in Settings.model_fields.items():
        kind = _flag_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        decls = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag,)
        default = getattr(field.default, "value", field.default) if not field.is_required() else "required"
        shown = "(secret)" if "Secret" in str(field.annotation) else default
        text = f"{field.description or ''} [env GLIDER_{name.upper()}; default {shown}]".strip()
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind | None, typer.Option(*decls, help=text)]))
    return params


def serve(**options) -> None:
    """Serve the hierarchical agent over REST and gRPC."""
    require("server", command="serve")
    from glider.server.app import serve as run

    s = settings(**options)
    setup_logging(s.log_level)
    raise typer.Exit(run(s))


serve.__signature__ = inspect.Signature(_parameters(), return_annotation=None)
