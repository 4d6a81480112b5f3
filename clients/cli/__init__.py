"""The ``glider`` command: the composition root, the one part that may import every other.

    glider backbone build      the embedded tiny backbone (tokenizer + Llama), from a seed
    glider adapters ...        LoRA adapters in the registry (init, publish, list, prune)
    glider serve               the agent server (REST + gRPC); every setting is a flag
    glider play                play episodes through a running server
    glider data ...            expert trajectories and the hierarchical datasets
    glider train ...           warm-up, SFT, ORL, O2O (the trainer sidecar)
    glider eval ...            the papers' evaluation protocols, with CIs
    glider demo                all of the above that is missing, then one ScienceWorld episode and the table

One module per command group. Each group states the extra it needs (``glider[server]``,
``[train]``, ``[envs]``): on an install without it, the command says which to add.
"""

from __future__ import annotations

import typer
from glider.clients.cli import adapters, backbone, data, demo, play, serve, train
from glider.clients.cli import eval as evaluation

app = typer.Typer(no_args_is_help=True, add_completion=False, help="GLIDER: hierarchical LLM agents.")
app.add_typer(backbone.app, name="backbone")
app.add_typer(adapters.app, name="adapters")
app.command()(serve.serve)
app.command()(play.play)
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.add_typer(evaluation.app, name="eval")
app.command()(demo.demo)

__all__ = ["app"]
