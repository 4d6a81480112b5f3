"""Faults an operator meets: a server restarted mid-episode, Redis going away and coming back,
a trainer killed mid-publish, a disk that fills during a publish, an engine killed under a live
server. Real processes throughout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from glider.clients.sdk import GliderAPIError, GliderClient
from glider.server.adapters import AdapterRegistry
from glider.server.api.rest import create_app
from glider.server.app import build_agent
from glider.server.settings import Settings

from tests.conftest import ServerProcess, free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

ADMIN_SECRET = "admin-secret-4c1f9e"
REDIS_SECRET = "redis-secret-8d2a7b"


def test_a_restarted_server_goes_on_with_the_episode_and_rides_out_a_redis_outage(
        backbone_dir, adapters_dir, tmp_path):
    redis = RedisServer(tmp_path / "redis", free_port(), password=REDIS_SECRET).start()
    env = {"GLIDER_STORE": "redis", "GLIDER_REDIS_URL": redis.url, "GLIDER_ADMIN_TOKEN": ADMIN_SECRET,
           "GLIDER_REDIS_TIMEOUT_S": "1", "GLIDER_LOG_LEVEL": "debug"}
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = ServerProcess("hf", backbone_dir, adapters_dir, logs[0], **env)
    second = None
    try:
        first.wait_ready()
        with GliderClient(first.url) as client:
            eid = client.act(observation="hallway", task="find a plant").episode_id
            client.act(observation="kitchen", episode_id=eid, step=1)
        first.stop()  # mid-episode: SIGTERM, as a rolling update or a drain does

        second = ServerProcess("hf", backbone_dir, adapters_dir, logs[1], **env)
        second.wait_ready()
        with GliderClient(second.url) as client:
            assert client.get_episode(eid).step == 2
            assert client.act(observation="garden", episode_id=eid, step=2).step == 2

            redis.stop()
            with pytest.raises(GliderAPIError) as down:
                client.act(observation="greenhouse", episode_id=eid, step=3)
            assert (down.value.status, down.value.code) == (503, "store_unavailable")
            assert client.ready() is not None  # the engine is fine: the pod stays in the Service

            redis.start()
            reply = client.act(observation="greenhouse", episode_id=eid, step=3)
            assert reply.step == 3 and client.get_episode(eid).step == 4
    finally:
        first.stop()
        if second is not None:
            second.stop()
        redis.stop()
    for log in logs:  # neither secret reaches a log, not even at debug level
        text = log.read_text()
        assert ADMIN_SECRET not in text and REDIS_SECRET not in text, log


def engine_core(server: ServerProcess) -> psutil.Process:
    """vLLM's engine core: a child process of the server that names itself EngineCore."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        if any("EngineCore" in part for part in [child.name(), *child.cmdline()]):
            return child
    raise AssertionError("no EngineCore process under the server")


def test_a_killed_engine_stops_the_server_and_its_successor_goes_on_with_the_episode(
        backbone_dir, adapters_dir, redis_server, tmp_path):
    env = {"GLIDER_STORE": "redis", "GLIDER_REDIS_URL": redis_server.url_of(3), "GLIDER_ENGINE_WATCHDOG_S": "0.2"}
    server = ServerProcess("vllm", backbone_dir, adapters_dir, tmp_path / "vllm.log", **env)
    successor = None
    try:
        server.wait_ready()
        with GliderClient(server.url) as client:
            eid = client.act(observation="hallway", task="find a plant").episode_id
        engine_core(server).kill()  # SIGKILL, as the kernel's OOM killer sends

        # the server notices within its watchdog period and exits non-zero, so that Kubernetes or
        # Docker restarts it (liveness agrees while it is on its way out)
        liveness = set()
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:
            try:
                liveness.add(httpx.get(f"{server.url}/healthz", timeout=2).status_code)
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert server.proc.poll() == 1, server.log.read_text()[-3000:]
        assert liveness <= {200, 503}
        assert "vLLM engine failed" in server.log.read_text()

        successor = ServerProcess("hf", backbone_dir, adapters_dir, tmp_path / "hf.log", **env)
        successor.wait_ready()
        with GliderClient(successor.url) as client:
            assert client.get_episode(eid).step == 1
            assert client.act(observation="kitchen", episode_id=eid, step=1).step == 1
    finally:
        server.stop()
        if successor is not None:
            successor.stop()


async def test_a_dead_hf_batcher_fails_liveness_readiness_and_every_step_at_once(backbone_dir, adapters_dir):
    agent = build_agent(Settings(backend="hf", model=backbone_dir, adapters=adapters_dir, adapter_poll_s=0))
    await agent.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(agent)), base_url="http://t") as http:
            first = await http.post("/act", json={"observation": "hallway", "task": "find a plant"})
            assert first.status_code == 200 and (await http.get("/healthz")).status_code == 200
            agent.backend._worker.cancel()  # the one consumer of the request queue is gone
            await asyncio.sleep(0)

            health = await http.get("/healthz")
            assert health.status_code == 503, health.text
            assert health.json()["status"] == "failed" and "batch worker" in health.json()["detail"]
            assert (await http.get("/readyz")).status_code == 503
            step = await asyncio.wait_for(http.post("/act", json={
                "observation": "kitchen", "episode_id": first.json()["episode_id"], "step": 1}), timeout=10)
            assert step.status_code == 503 and step.json()["error"]["code"] == "backend_unavailable", step.text
            assert (await agent.get_episode(first.json()["episode_id"])).step == 1  # the failed step lost nothing
    finally:
        await agent.close()


PUBLISHER = """
import sys
from pathlib import Path
from glider.server.adapters import AdapterRegistry
AdapterRegistry(Path(sys.argv[1])).publish("planner", Path(sys.argv[2]), metadata={"stage": "fault"})
"""


def big_adapter(tmp_path, mib: int = 24):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (src / "adapter_model.safetensors").write_bytes(os.urandom(mib << 20))
    return src


def check_registry(root) -> list[str]:
    """Every version a reader can see is whole and verifies, and `current` names one of them."""
    reg = AdapterRegistry(root)
    versions = reg.versions("planner")
    for version in versions:
        reg.verify(reg.get("planner", version))
    assert reg.current_version("planner") in versions
    return versions


def test_a_trainer_killed_mid_publish_leaves_nothing_half_visible(tmp_path):
    root = tmp_path / "registry"
    src = big_adapter(tmp_path, mib=96)  # big enough that copy, hash and fsync take a while
    AdapterRegistry(root).publish("planner", src)  # v0001 serves
    t0 = time.monotonic()  # how long a whole publishing process takes here, start to exit
    subprocess.run([sys.executable, "-c", PUBLISHER, str(root), str(src)], check=True)
    whole = time.monotonic() - t0
    killed = 0
    for i in range(12):  # kill points spread evenly over a publish: import, copy, hash, fsync, rename
        proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(root), str(src)])
        time.sleep(whole * (i + 0.5) / 12)
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        check_registry(root)
    assert killed >= 8, killed  # the later kill points may find the process already gone
    # the leftovers are hidden temporary folders, which nothing reads, and a later publish works
    AdapterRegistry(root).publish("planner", src)
    assert check_registry(root)[-1] == AdapterRegistry(root).current_version("planner")


DISK_FULL = """
import resource, signal, sys
from pathlib import Path
from glider.server.adapters import AdapterRegistry
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    AdapterRegistry(Path(sys.argv[1])).publish("planner", Path(sys.argv[2]))
except OSError as exc:
    print("publish failed:", exc.strerror)
    sys.exit(3)
"""


def test_a_publish_that_runs_out_of_space_changes_nothing(tmp_path):
    root = tmp_path / "registry"
    src = big_adapter(tmp_path, mib=4)
    small = tmp_path / "small"
    small.mkdir()
    (small / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    (small / "adapter_model.safetensors").write_bytes(os.urandom(1024))
    AdapterRegistry(root).publish("planner", small)
    before = sorted(p.name for p in (root / "planner").iterdir())
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(root), str(src)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3 and "publish failed" in done.stdout, done.stdout + done.stderr
    assert sorted(p.name for p in (root / "planner").iterdir()) == before  # no temporary folder left
    assert check_registry(root) == ["v0001"]
