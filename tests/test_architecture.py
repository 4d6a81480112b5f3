"""The layer contracts of docs/architecture.md, checked by import-linter (`[tool.importlinter]` in
pyproject.toml), and proof that the check can fail: the linter must see every import in the source,
function-local ones included, through setuptools' package-dir mapping of our folders into `glider.*`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
#: folder -> the package it is installed as (pyproject.toml's package-dir)
PARTS = {"server": "glider.server", "trainer": "glider.trainer", "clients": "glider.clients",
         "protos/glider/v1": "glider.v1"}


def lint(config: Path | None = None) -> subprocess.CompletedProcess:
    args = [str(LINT), "--no-cache"] + (["--config", str(config)] if config else [])
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    done = lint()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "7 kept" in done.stdout, done.stdout[-2000:]


def test_a_broken_contract_fails_even_through_a_function_local_import(tmp_path):
    """`glider.clients.cli` imports the server only inside functions; a contract forbidding it must
    fail, naming the line."""
    config = tmp_path / "violation.toml"
    config.write_text('''[tool.importlinter]
root_packages = ["glider.v1", "glider.server", "glider.trainer", "glider.clients"]

[[tool.importlinter.contracts]]
name = "deliberately violated: the CLI may not import the server app"
type = "forbidden"
source_modules = ["glider.clients.cli.serve"]
forbidden_modules = ["glider.server.app"]
''')
    done = lint(config)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "glider.clients.cli.serve -> glider.server.app" in done.stdout, done.stdout[-2000:]


def module_name(path: Path) -> str:
    for folder, package in PARTS.items():
        base = ROOT / folder
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    raise AssertionError(path)


def source_imports(modules: set[str]) -> set[tuple[str, str]]:
    """(importer, imported module) for every `glider.*` import in the source, wherever it is written:
    `from pkg import sub` imports the module `pkg.sub` when there is one, else `pkg` itself."""
    found = set()
    for folder in PARTS:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            importer = module_name(path)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("glider."):
                    for alias in node.names:
                        sub = f"{node.module}.{alias.name}"
                        found.add((importer, sub if sub in modules else node.module))
                elif isinstance(node, ast.Import):
                    found |= {(importer, a.name) for a in node.names if a.name.startswith("glider.")}
    return {(a, b) for a, b in found if a != b}


def test_the_linter_sees_every_import_in_the_source():
    graph = grimp.build_graph(*PARTS.values())
    imports = source_imports(graph.modules)
    assert len(imports) > 200, len(imports)  # the walk found the source
    missing = sorted((a, b) for a, b in imports if not graph.direct_import_exists(importer=a, imported=b))
    assert not missing, missing[:20]


@pytest.mark.parametrize("module", ["glider.clients.cli.train", "glider.server.agent", "glider.trainer.sft"])
def test_the_linter_resolves_our_folders(module):
    graph = grimp.build_graph(*PARTS.values())
    assert module in graph.modules


def test_every_package_folder_is_in_the_wheel():
    """setuptools installs only the packages pyproject.toml lists: an editable install finds a missing
    one anyway (through package-dir), the images' regular install does not.  Folders that carry only
    data (the plan files) are listed as data packages, without an ``__init__.py``."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {module_name(init) for folder in PARTS for init in (ROOT / folder).rglob("__init__.py")}
    data = set(setuptools["package-data"])
    for package in data:  # a data package is a real folder holding files, and no code package
        folder, base = next((f, p) for f, p in PARTS.items() if package.startswith(p + "."))
        path = ROOT / folder / package.removeprefix(base + ".").replace(".", "/")
        assert any(f.is_file() for f in path.iterdir()) and not (path / "__init__.py").exists(), package
    assert folders | data == listed, (sorted((folders | data) - listed), sorted(listed - folders - data))
