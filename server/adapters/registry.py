"""The adapter registry: versioned peft adapters with an atomically moved ``current`` pointer.

    <root>/<name>/<version>/adapter_config.json
                           /adapter_model.safetensors
                           /manifest.json          (base model, rank, targets, sha256 of files)
    <root>/<name>/current -> <version>             (a symlink, replaced with rename(2))

Publishing copies into a hidden temporary directory, fsyncs, checks the
files, renames it into place and only then moves ``current``: a reader never
sees a half-written version.  Clients name adapters and versions, never paths;
names and versions are validated so nothing resolves outside the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
MANIFEST = "manifest.json"
CURRENT = "current"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
VERSION_PATTERN = r"^v\d{4,}$"
_NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(VERSION_PATTERN)


class AdapterNotFound(LookupError):
    pass


class InvalidAdapter(ValueError):
    pass


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: str
    path: Path
    manifest: dict


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def base_model_identity(model_dir: Path) -> dict:
    """Name and a hash of what fixes an adapter's fit: config, weights index, tokenizer.

    Hashing the weights themselves would read gigabytes for a real backbone;
    the config and the sharded-weights index pin the architecture and layout,
    the tokenizer pins the token ids the adapter was trained on, and the
    embedded backbone's build record pins its warm-up (same shapes, new weights).
    """
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for fname in ("config.json", "model.safetensors.index.json", "tokenizer.json", "glider_backbone.json"):
        f = model_dir / fname
        if f.is_file():
            h.update(fname.encode() + b"\0" + f.read_bytes())
    return {"name": model_dir.resolve().name, "config_sha256": h.hexdigest()}


class AdapterRegistry:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- validation -------------------------------------------------------------
    @staticmethod
    def check_name(name: str) -> str:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidAdapter(f"invalid adapter name {name!r}")
        return name

    @staticmethod
    def check_version(version: str) -> str:
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise InvalidAdapter(f"invalid adapter version {version!r} (expected v0001, v0002, ...)")
        return version

    def _dir(self, name: str, version: str | None = None) -> Path:
        path = self.root / self.check_name(name)
        if version is not None:
            path = path / self.check_version(version)
        return path

    # -- reading ----------------------------------------------------------------
    def versions(self, name: str) -> list[str]:
        d = self._dir(name)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if _VERSION_RE.match(p.name) and p.is_dir())

    def current_version(self, name: str) -> str:
        link = self._dir(name) / CURRENT
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            raise AdapterNotFound(f"adapter {name!r} has no current version in {self.root}") from None
        return self.check_version(Path(target).name)

    def get(self, name: str, version: str | None = None) -> AdapterVersion:
        version = version or self.current_version(name)
        path = self._dir(name, version)
        if path.is_symlink() or self._dir(name).is_symlink():  # a link could point anywhere on disk
            raise InvalidAdapter(f"adapter {name}@{version} is a symbolic link; the registry holds only "
                                 "real directories")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise AdapterNotFound(f"adapter {name}@{version} not found")
        manifest = json.loads(manifest_path.read_text())
        return AdapterVersion(name=name, version=version, path=path, manifest=manifest)

    def holds_same(self, adapter: AdapterVersion, source: Path) -> bool:
        """Whether the peft directory ``source`` is ``adapter`` again: the same weights, byte for byte, and
        the same configuration (peft writes ``target_modules``, a set, in a per-process order)."""
        source = Path(source)
        if not all((source / f).is_file() for f in PEFT_FILES):
            return False
        if _sha256(source / "adapter_model.safetensors") != adapter.manifest.get("files", {}).get(
                "adapter_model.safetensors"):
            return False

        def config(directory: Path) -> dict:
            c = json.loads((directory / "adapter_config.json").read_text())
            return {**c, "target_modules": sorted(c.get("target_modules") or [])}

        return config(source) == config(adapter.path)

    def verify(self, adapter: AdapterVersion) -> None:
        """Every peft file is listed in the manifest and on disk with its checksum."""
        files = adapter.manifest.get("files") or {}
        label = f"adapter {adapter.name}@{adapter.version}"
        for fname in PEFT_FILES:
            if fname not in files:
                raise InvalidAdapter(f"{label}: manifest does not list {fname}")
        for fname, digest in files.items():
            f = adapter.path / fname
            if Path(fname).name != fname or not f.is_file():
                raise InvalidAdapter(f"{label}: {fname} is missing")
            if f.is_symlink():
                raise InvalidAdapter(f"{label}: {fname} is a symbolic link, not a file of the registry")
            if _sha256(f) != digest:
                raise InvalidAdapter(f"{label}: {fname} does not match its checksum (corrupt or truncated)")

    def validate(self, adapter: AdapterVersion, *, base_model: dict | None = None,
                 max_rank: int | None = None, supported_modules: set[str] | None = None) -> None:
        """Everything an engine needs to hold true before it loads ``adapter``."""
        self.verify(adapter)
        label = f"adapter {adapter.name}@{adapter.version}"
        try:
            config = json.loads((adapter.path / "adapter_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidAdapter(f"{label}: adapter_config.json is unreadable: {exc}") from None
        if config.get("peft_type", "LORA") != "LORA":
            raise InvalidAdapter(f"{label}: not a LoRA adapter ({config.get('peft_type')})")
        if base_model is not None:
            theirs = (adapter.manifest.get("base_model") or {}).get("config_sha256")
            if theirs != base_model.get("config_sha256"):
                raise InvalidAdapter(
                    f"{label}: trained on another base model ({theirs or 'unknown'}), "
                    f"this server serves {base_model.get('name')} ({base_model.get('config_sha256')})")
        rank = config.get("r")
        if not isinstance(rank, int) or rank < 1:
            raise InvalidAdapter(f"{label}: invalid rank {rank!r}")
        if max_rank is not None and rank > max_rank:
            raise InvalidAdapter(f"{label}: rank {rank} exceeds the engine's max_lora_rank {max_rank}")
        targets = config.get("target_modules") or []
        if isinstance(targets, str):
            targets = [targets]
        if supported_modules is not None:
            unsupported = sorted(set(targets) - supported_modules)
            if unsupported or not targets:
                raise InvalidAdapter(f"{label}: target modules {unsupported or targets} are not supported "
                                     f"(supported: {sorted(supported_modules)})")
        self._check_weights(adapter, label, rank)

    @staticmethod
    def _check_weights(adapter: AdapterVersion, label: str, rank: int) -> None:
        """The weights file parses and its LoRA matrices have the declared rank.

        An engine must never be handed an unreadable adapter: vLLM refuses it at
        load time, but a request that reaches a broken adapter kills the engine.
        """
        from safetensors import SafetensorError, safe_open

        path = adapter.path / "adapter_model.safetensors"
        try:
            with safe_open(str(path), framework="numpy") as f:
                keys = list(f.keys())
                if not keys:
                    raise InvalidAdapter(f"{label}: adapter_model.safetensors holds no tensors")
                for key in keys:
                    shape = f.get_slice(key).get_shape()
                    if "lora_A" in key and (len(shape) != 2 or shape[0] != rank):
                        raise InvalidAdapter(f"{label}: {key} has shape {shape}, not rank {rank}")
                    if "lora_B" in key and (len(shape) != 2 or shape[1] != rank):
                        raise InvalidAdapter(f"{label}: {key} has shape {shape}, not rank {rank}")
        except SafetensorError as exc:
            raise InvalidAdapter(f"{label}: adapter_model.safetensors is unreadable: {exc}") from None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def prune(self, name: str, keep: int) -> list[str]:
        """Delete all but the newest ``keep`` versions; never the current one or its parent."""
        versions = self.versions(name)
        protected = set(versions[-keep:]) if keep > 0 else set()
        current = self._current_or_none(name)
        if current is not None:
            protected.add(current)
            parent = self.get(name, current).manifest.get("parent")
            if parent:
                protected.add(parent)
        removed = []
        for version in versions:
            if version not in protected:
                # rename first so a reader never sees a half-deleted version
                path = self._dir(name, version)
                doomed = path.with_name(f".delete-{version}-{os.getpid()}")
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(version)
        return removed

    # -- writing ----------------------------------------------------------------
    def pinned_copy(self, versions: dict[str, str], dst: Path) -> AdapterRegistry:
        """A registry at ``dst`` holding exactly ``versions`` (adapter -> version), each current: one
        agent of several published in this registry, to serve on its own (an evaluation of SFT beside
        SFT+ORL).  Files are hard-linked where the filesystem allows (a registry refuses symbolic
        links); a copy already holding the same versions is reused."""
        out = AdapterRegistry(dst)
        for name, version in versions.items():
            src = self.get(name, version)
            target = out._dir(name, version)
            if not (target / MANIFEST).is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=".pin-", dir=target.parent))

                def link_or_copy(a, b):
                    try:
                        os.link(a, b)
                    except OSError:
                        shutil.copy2(a, b)

                shutil.copytree(src.path, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
                os.rename(tmp, target)
            out.set_current(name, version)
        return out

    def next_version(self, name: str) -> str:
        existing = self.versions(name)
        n = int(existing[-1][1:]) + 1 if existing else 1
        return f"v{n:04d}"

    def publish(self, name: str, source: Path, *, metadata: dict | None = None,
                make_current: bool = True) -> AdapterVersion:
        """Copy a peft adapter directory in as the next version of ``name``."""
        source = Path(source)
        missing = [f for f in PEFT_FILES if not (source / f).is_file()]
        if missing:
            raise InvalidAdapter(f"{source} is not a peft adapter: missing {', '.join(missing)}")
        config = json.loads((source / "adapter_config.json").read_text())
        name_dir = self._dir(name)
        name_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=name_dir))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; readers may be another user
        try:
            files = {}
            for fname in PEFT_FILES:
                shutil.copyfile(source / fname, tmp / fname)
                files[fname] = _sha256(tmp / fname)
            version = self.next_version(name)
            manifest = {
                "name": name,
                "version": version,
                "created": time.time(),
                "rank": config.get("r"),
                "lora_alpha": config.get("lora_alpha"),
                "target_modules": sorted(config.get("target_modules") or []),
                "base_model": (metadata or {}).pop("base_model", None),
                "parent": self._current_or_none(name),
                "files": files,
                **(metadata or {}),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            for f in tmp.iterdir():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            final = self._dir(name, version)
            os.rename(tmp, final)  # atomic; fails if a concurrent publisher took the version
            _fsync_dir(name_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if make_current:
            self.set_current(name, version)
        return self.get(name, version)

    def _current_or_none(self, name: str) -> str | None:
        try:
            return self.current_version(name)
        except AdapterNotFound:
            return None

    def set_current(self, name: str, version: str) -> None:
        if not self._dir(name, version).is_dir():
            raise AdapterNotFound(f"adapter {name}@{version} not found")
        name_dir = self._dir(name)
        tmp_link = name_dir / f".{CURRENT}-{os.getpid()}-{time.monotonic_ns()}"
        os.symlink(version, tmp_link)
        os.replace(tmp_link, name_dir / CURRENT)
        _fsync_dir(name_dir)
