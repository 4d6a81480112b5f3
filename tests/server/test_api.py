"""REST API in-process, on a backend whose timing and failures the test controls.

The model's text is irrelevant here; what is tested is the transport and the
Agent's rules: concurrent steps on one episode, backend failures, bad input.
"""

import asyncio
import json

import httpx
import numpy as np
import pytest
from glider.server.adapters import AdapterNotFound, AdapterRegistry
from glider.server.agent import Agent
from glider.server.api.rest import BodyLimit, create_app
from glider.server.backends.base import (
    AdapterHandle,
    Backend,
    BackendError,
    GenerationResult,
    ScoreResult,
)
from glider.server.settings import Settings
from glider.server.store import MemoryEpisodeStore
from glider.server.store.recorder import TrajectoryRecorder
from glider.trainer.publish import publish_adapter
from safetensors.numpy import save_file

from tests.badinput import check_all, error_of, snapshot, start_episode


class ControlledBackend(Backend):
    """Answers "look around; false" (and a subgoal), optionally after a gate opens, or fails."""

    kind = "controlled"

    def __init__(self):
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.specs: list = []  # every generation asked for, in order
        self.scored: list = []  # every scoring call (grounding), in order

    async def start(self):
        self.ready = True

    async def load_adapter(self, name, version, path):
        self.adapters[name] = AdapterHandle(name, version, path)
        return self.adapters[name]

    async def generate(self, specs):
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BackendError("engine unavailable")
        self.specs.extend(specs)
        # a generation constrained to choices (grounding): the shortest one, as the scripted scores prefer
        return [GenerationResult(min(s.choices, key=len) if s.choices else "look around; false",
                                 handle.version if (handle := self._handle(s.adapter)) else None, 10, 4)
                for s in specs]  # no adapter: the bare backbone, no version

    async def score(self, prompt, continuations, adapter):
        """A scripted model: the shorter the command, the likelier (grounding's choice)."""
        if self.fail:
            raise BackendError("engine unavailable")
        self.scored.append((prompt, adapter, list(continuations)))
        return ScoreResult([-float(len(c)) for c in continuations], [len(c.split()) for c in continuations],
                           self._handle(adapter).version)


def make_store(kind: str, request):
    if kind == "redis":
        from glider.server.store.redis_store import RedisEpisodeStore

        return RedisEpisodeStore(request.getfixturevalue("redis_url"))
    return MemoryEpisodeStore()


def make_agent(tmp_path, store, **overrides) -> tuple[Agent, ControlledBackend]:
    """An Agent on the controlled backend, with a registry holding a tiny planner and executor."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for name in ("planner", "executor"):
        src = tmp_path / f"src-{name}"
        src.mkdir()
        (src / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj"]}))
        save_file({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((8, 4), np.float32),
                   "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((4, 8), np.float32)},
                  str(src / "adapter_model.safetensors"))
        publish_adapter(tmp_path / "adapters", name, src, model, stage="test")
    reg = AdapterRegistry(tmp_path / "adapters")
    settings = Settings(**{"max_observation_chars": 1000, "max_body_bytes": 4096, "model": model,
                           "adapter_poll_s": 0, "max_valid_actions": 8, "max_valid_action_chars": 40, **overrides})
    backend = ControlledBackend()
    return Agent(settings, backend, store, reg), backend


@pytest.fixture(params=["memory", "redis"])
async def api(tmp_path, request):
    """The app on the controlled backend, with each episode store (the rules must not depend on it)."""
    agent, backend = make_agent(tmp_path, make_store(request.param, request))
    await agent.start()
    app = BodyLimit(create_app(agent), limit=agent.settings.max_body_bytes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client, backend, agent
    await agent.close()


async def test_bad_input_is_refused_and_changes_nothing(api):
    client, _, agent = api
    s = agent.settings
    await check_all(client, s.max_observation_chars, s.max_valid_actions, s.max_valid_action_chars)


async def test_a_step_with_admissible_commands_answers_one_of_them_and_records_both_texts(api, tmp_path):
    client, backend, agent = api
    agent.recorder = TrajectoryRecorder(tmp_path / "episodes")
    agent.recorder.start()
    # the executor says "look around", which is not admissible: the best-scored command is sent instead
    commands = ["open the door", "go north", "go north", "<|planner|> go to the hallway"]
    first = (await client.post("/act", json={"task": "boil water", "observation": "hall",
                                             "valid_actions": commands})).json()
    assert first["action"] == "go north" and first["grounded"] is True
    assert first["generated_action"] == "look around" and not first["fallback"]
    (constrained,) = [s for s in backend.specs if s.choices]  # the engine chose among the commands
    assert constrained.adapter == "executor" and constrained.prompt.endswith("Obs: hall\nAction:")
    # deduplicated and sanitised
    assert sorted(constrained.choices) == [" go north;", " go to the hallway;", " open the door;"]
    # an admissible generation is used as it is, and an empty list is no list
    second = (await client.post("/act", json={"episode_id": first["episode_id"], "observation": "north",
                                              "valid_actions": ["Look  Around", "go south"]})).json()
    assert (second["action"], second["grounded"], second["generated_action"]) == ("Look  Around", False, "look around")
    third = (await client.post("/act", json={"episode_id": first["episode_id"], "observation": "south",
                                             "valid_actions": []})).json()
    assert (third["action"], third["grounded"], third["generated_action"]) == ("look around", False, None)
    assert len([s for s in backend.specs if s.choices]) == 1 and not backend.scored
    recorder, agent.recorder = agent.recorder, None
    recorder.close()
    records = [json.loads(line) for f in (tmp_path / "episodes").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [(r["action"], r.get("generated_action"), r.get("grounded"), r.get("valid_actions")) for r in records] == [
        ("go north", "look around", True, 4), ("Look  Around", "look around", False, 2), ("look around", None, None, None)]


async def test_second_concurrent_step_gets_409_and_first_completes(api):
    client, backend, _ = api
    eid = (await start_episode(client))["episode_id"]
    backend.gate = asyncio.Event()
    first = asyncio.create_task(client.post("/act", json={"episode_id": eid, "observation": "a"}))
    await asyncio.sleep(0.05)
    second = await client.post("/act", json={"episode_id": eid, "observation": "b"})
    assert error_of(second, 409)["code"] == "episode_busy"
    backend.gate.set()
    r = await first
    assert r.status_code == 200 and r.json()["step"] == 1
    state = await snapshot(client, eid)
    assert state["step"] == 2
    assert [t["observation"] for t in state["current"]["turns"]] == ["You are in the hallway.", "a"]


async def test_backend_failure_is_503_and_the_episode_is_unchanged(api):
    client, backend, _ = api
    eid = (await start_episode(client))["episode_id"]
    before = await snapshot(client, eid)
    backend.fail = True
    r = await client.post("/act", json={"episode_id": eid, "observation": "x", "reward": 1.0})
    assert error_of(r, 503)["code"] == "backend_unavailable"
    assert await snapshot(client, eid) == before
    # a failed first step leaves no orphan episode behind
    r = await client.post("/act", json={"task": "t", "observation": "x"})
    assert r.status_code == 503
    metrics = (await client.get("/metrics")).text
    assert "glider_active_episodes 1.0" in metrics
    backend.fail = False
    r = await client.post("/act", json={"episode_id": eid, "observation": "x", "step": 1})
    assert r.status_code == 200 and r.json()["step"] == 1


async def test_oversize_body_is_413(api):
    client, _, _ = api
    r = await client.post("/act", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"})
    assert error_of(r, 413)["code"] == "body_too_large"


async def test_episode_lifecycle_and_metrics(api):
    client, _, _ = api
    r = await client.post("/episodes", json={"task": "boil water", "episode_id": "run-1:ep.0"})
    assert r.status_code == 201 and r.json()["step"] == 0
    r = await client.post("/act", json={"episode_id": "run-1:ep.0", "observation": "hall", "step": 0})
    body = r.json()
    assert body["new_subgoal"] is True and body["action"] == "look around"
    assert body["adapter_versions"] == {"planner": "v0001", "executor": "v0001"}
    view = await snapshot(client, "run-1:ep.0")
    assert view["planner_calls"] == 1 and view["executor_calls"] == 1 and view["subgoal"] == "look around"
    metrics = (await client.get("/metrics")).text
    assert 'glider_generations_total{profile="default",role="planner"} 1.0' in metrics
    assert 'glider_generated_tokens_total{profile="default",role="executor"} 4.0' in metrics
    assert 'glider_subgoals_total{profile="default"} 1.0' in metrics
    assert 'glider_request_latency_seconds_count{route="/act"}' in metrics
    assert (await client.delete("/episodes/run-1:ep.0")).status_code == 204
    error_of(await client.get("/episodes/run-1:ep.0"), 404)
    assert (await client.get("/readyz")).json()["adapters"] == {"planner": "v0001", "executor": "v0001"}


async def test_redis_outage_is_503_and_the_episode_goes_on_when_it_returns(tmp_path):
    from glider.server.store.redis_store import RedisEpisodeStore

    from tests.conftest import free_port
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", free_port()).start()
    backend = ControlledBackend()
    agent = Agent(Settings(model=tmp_path, adapter_poll_s=0), backend,
                  RedisEpisodeStore(server.url, timeout_s=1.0), AdapterRegistry(tmp_path / "none"))
    backend.ready = True
    app = create_app(agent)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            backend.adapters = {n: AdapterHandle(n, "v1", tmp_path) for n in ("planner", "executor")}
            eid = (await start_episode(client))["episode_id"]
            before = await snapshot(client, eid)
            server.stop()
            r = await client.post("/act", json={"episode_id": eid, "observation": "x", "step": 1})
            assert error_of(r, 503)["code"] == "store_unavailable"
            assert "redis://" not in r.text  # the URL (and any password in it) stays on the server
            error_of(await client.get(f"/episodes/{eid}"), 503)
            server.start()
            assert await snapshot(client, eid) == before
            r = await client.post("/act", json={"episode_id": eid, "observation": "x", "step": 1})
            assert r.status_code == 200 and r.json()["step"] == 1
    finally:
        await agent.close()
        server.stop()


async def test_a_retried_step_gets_the_same_answer_once_and_a_different_one_is_refused(api):
    """At-least-once clients: the reply to step k was lost, so step k is sent again."""
    client, backend, agent = api
    eid = (await start_episode(client))["episode_id"]
    calls = 0
    generate = backend.generate

    async def counting(specs):
        nonlocal calls
        calls += 1
        return await generate(specs)

    backend.generate = counting
    body = {"episode_id": eid, "observation": "kitchen", "reward": 0.5, "step": 1}
    first = await client.post("/act", json=body)
    assert first.status_code == 200 and calls == 1
    state = await snapshot(client, eid)
    again = await client.post("/act", json=body)
    assert again.status_code == 200 and again.json() == first.json()
    assert calls == 1 and await snapshot(client, eid) == state  # no second generation, no second step
    # the same index with another observation is another step, not a retry
    other = await client.post("/act", json={**body, "observation": "garden"})
    assert error_of(other, 409)["code"] == "step_mismatch"
    # the closing step too: the retry gets done again, not "episode finished"
    end = {"episode_id": eid, "observation": "the end", "done": True, "step": 2}
    closing = await client.post("/act", json=end)
    assert closing.json()["done"] is True
    assert (await client.post("/act", json=end)).json() == closing.json()
    assert error_of(await client.post("/act", json={**end, "step": 3}), 409)["code"] == "episode_finished"
    assert "glider_step_replays_total 2.0" in (await client.get("/metrics")).text


async def test_an_episode_samples_with_its_own_settings_and_greedy_ones_keep_the_servers(api, tmp_path):
    """Online RL plays sampled rollouts beside greedy evaluation on one server: each episode's
    `sampling` reaches the engine (seeded from its own seed, whatever its id), the others' do not."""
    client, backend, agent = api
    seen = backend.specs
    agent.recorder = TrajectoryRecorder(tmp_path / "episodes")
    agent.recorder.start()
    own = {"temperature": 0.7, "top_p": 0.9, "seed": 42}
    sampled = (await client.post("/act", json={"task": "boil water", "observation": "hall", "sampling": own})).json()
    view = await snapshot(client, sampled["episode_id"])
    assert view["sampling"] == own
    assert seen and all((s.temperature, s.top_p) == (0.7, 0.9) and s.seed is not None for s in seen)
    first_seeds = [s.seed for s in seen]

    seen.clear()  # the same seed under another id draws the same seeds: a rollout is reproducible
    r = await client.post("/episodes", json={"task": "boil water", "episode_id": "again-42", "sampling": own})
    assert r.status_code == 201 and r.json()["sampling"] == own
    await client.post("/act", json={"episode_id": "again-42", "observation": "hall"})
    assert [s.seed for s in seen] == first_seeds

    seen.clear()  # an episode without its own settings is served with the server's (greedy, unseeded)
    greedy = await start_episode(client)
    assert (await snapshot(client, greedy["episode_id"]))["sampling"] is None
    assert seen and all((s.temperature, s.top_p, s.seed) == (0.0, 1.0, None) for s in seen)

    # the server's bound: an operator may forbid sampled episodes altogether
    agent.settings.episode_max_temperature = 0.0
    r = await client.post("/act", json={"task": "boil water", "observation": "hall", "sampling": {"temperature": 0.1}})
    assert "temperature" in error_of(r, 422)["message"]

    recorder, agent.recorder = agent.recorder, None
    recorder.close()  # the episode log says how each episode was sampled
    records = [json.loads(line) for f in (tmp_path / "episodes").glob("*.jsonl") for line in f.read_text().splitlines()]
    by_episode = {r["episode_id"]: r["sampling"] for r in records}
    assert by_episode == {sampled["episode_id"]: own, "again-42": own, greedy["episode_id"]: None}


async def grounded_first_step(tmp_path, valid_actions: list[str], **overrides):
    """An episode's first step with admissible commands, on an Agent with these settings (memory store)."""
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore(), **overrides)
    await agent.start()
    try:
        result = await agent.act(observation="hall", task="boil water", valid_actions=valid_actions)
    finally:
        await agent.close()
    return agent, backend, result


@pytest.mark.parametrize("early_stop", [True, False])
async def test_the_constrained_choice_stops_at_deciding_prefixes_unless_told_to_write_the_whole_command(
        tmp_path, early_stop):
    agent, backend, result = await grounded_first_step(tmp_path, ["open the door", "open the drawer", "go north"],
                                                       grounding_early_stop=early_stop)
    assert (result.action, result.grounded) == ("go north", True)
    (constrained,) = [s for s in backend.specs if s.choices]
    # " open the do" is inside neither other option, and " g" is the shortest prefix of " go north;"
    expected = sorted([" g", " open the do", " open the dr"]) if early_stop else []
    assert sorted(constrained.stop) == expected


async def test_score_grounding_takes_the_most_likely_command(tmp_path):
    agent, backend, result = await grounded_first_step(tmp_path, ["open the door", "go north", "go to the kitchen"],
                                                       grounding_method="score")
    assert (result.action, result.grounded, result.generated_action) == ("go north", True, "look around")
    (prompt, adapter, scored), = backend.scored
    assert adapter == "executor" and sorted(scored) == [" go north;", " go to the kitchen;", " open the door;"]
    assert not [s for s in backend.specs if s.choices]


async def test_http_conformance_405_allow_and_401_before_403(tmp_path):
    for token in (None, "test-token"):  # the admin API disabled, and enabled
        home = tmp_path / str(token)
        home.mkdir()
        agent, _ = make_agent(home, MemoryEpisodeStore(), **({"admin_token": token} if token else {}))
        transport = httpx.ASGITransport(app=create_app(agent))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            wrong_method = await client.get("/act")
            assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
            missing = await client.get("/admin/profiles")
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            wrong = await client.get("/admin/profiles", headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 403


def test_an_engine_busy_wait_the_engine_cannot_wake_from_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 0.001"):
        Settings(engine_busy_wait_s=0)  # the engine never answered its first request
    assert Settings(engine_busy_wait_s=0.002).engine_busy_wait_s == 0.002


def test_the_engine_cores_map_onto_vllms_binding_and_a_malformed_list_is_refused():
    import os

    from glider.server.backends.vllm import omp_threads_bind
    from pydantic import ValidationError

    assert omp_threads_bind("auto") is None  # vLLM's own binding (or the operator's variable) stays
    assert omp_threads_bind("all") == ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    assert omp_threads_bind(Settings(engine_cpus="0-3,6").engine_cpus) == "0-3,6"
    for bad in ("every", "0-", "1;rm", ""):
        with pytest.raises(ValidationError, match="engine_cpus"):
            Settings(engine_cpus=bad)


def test_a_request_trace_that_cannot_be_written_is_dropped_not_the_step(tmp_path):
    from glider.server.backends.base import GenerationResult, GenerationSpec
    from glider.server.backends.vllm import VLLMBackend

    class Full:
        closed = False

        def write(self, _):
            raise OSError(28, "No space left on device")

        def close(self):
            self.closed = True

    backend = VLLMBackend(Settings(trace_requests=tmp_path / "trace.jsonl"))
    backend._trace = trace = Full()
    backend._write_trace(0.0, GenerationSpec(prompt="p", adapter=None), None,
                         GenerationResult(text="go", adapter_version=None, prompt_tokens=1, completion_tokens=1))
    assert backend._trace is None and trace.closed  # tracing stopped; the step's result stands


async def test_a_start_that_fails_closes_the_engine_it_started(tmp_path):
    # with the engine left running, the process would wait for it at exit and never end
    agent, backend = make_agent(tmp_path, MemoryEpisodeStore())
    agent.recorder = TrajectoryRecorder(tmp_path / "episodes")
    (tmp_path / "adapters" / "planner" / "current").unlink()  # the default profile cannot load
    with pytest.raises(AdapterNotFound, match="planner"):
        await agent.start()
    assert not backend.ready and agent.recorder._thread is None
