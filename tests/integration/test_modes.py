"""The shared (one adapter, role by prompt) and flat (no hierarchy) modes on a real engine."""

from __future__ import annotations

import httpx
import pytest
from glider.clients.sdk import GliderClient

from tests.conftest import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["shared", "flat"])
def mode_server(request, backbone_dir, adapters_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / f"{request.param}.log"
    server = ServerProcess("hf", backbone_dir, adapters_dir, log, GLIDER_MODE=request.param)
    try:
        server.wait_ready()
        yield request.param, server
    finally:
        server.stop()


def test_mode_serves_with_its_adapters(mode_server):
    mode, server = mode_server
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["mode"] == mode and ready["adapters"] == {mode: "v0001"}
    with GliderClient(server.url) as client:
        reply = client.act(observation="This room is called the hallway.", task="boil water")
        for i in range(1, 3):
            reply = client.act(observation=f"step {i}", episode_id=reply.episode_id)
        view = client.get_episode(reply.episode_id)
    assert reply.adapter_versions == {mode: "v0001"}
    if mode == "flat":
        assert reply.subgoal is None and view.planner_calls == 0 and view.current is None
        assert [t.observation for t in view.history] == ["This room is called the hallway.", "step 1", "step 2"]
    else:
        assert reply.subgoal and view.planner_calls >= 1 and view.subgoal_count >= 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'glider_env_steps_total{{mode="{mode}",profile="default"}} 3.0' in metrics
