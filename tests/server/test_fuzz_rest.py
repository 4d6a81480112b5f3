"""Property-based fuzzing of the REST API with schemathesis, over the app's own OpenAPI.

Every operation gets generated requests, valid and invalid, with and without the admin token;
every response must be a non-5xx that matches the documented schema, status code and content
type. A stateful run chains create episode -> act -> get -> delete through the links schemathesis
infers. The app is the real one (Agent, store, registry, FastAPI) on the controlled backend, so
thousands of steps take seconds; the long run is the same test with GLIDER_FUZZ_EXAMPLES raised.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import schemathesis
from glider.server.api.rest import BodyLimit, create_app
from glider.server.store import MemoryEpisodeStore
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.server.test_api import make_agent

EXAMPLES = int(os.environ.get("GLIDER_FUZZ_EXAMPLES", "60"))
TOKEN = "fuzz-admin-token"


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    # the default body limit (1 MiB) holds any request within the documented lengths, as in production
    agent, _ = make_agent(tmp_path_factory.mktemp("fuzz"), MemoryEpisodeStore(max_episodes=100_000),
                          admin_token=TOKEN, max_body_bytes=1 << 20)
    asyncio.run(agent.start())
    app = BodyLimit(create_app(agent), limit=agent.settings.max_body_bytes)
    app.agent = agent
    return app


# Creating and deleting agent profiles is fuzzed on an app of its own: a profile the fuzzer creates has no
# adapters, and its episodes are then refused with a documented 503 (profile_unavailable), which the
# "no 5xx" check here would count against every later episode operation.
PROFILE_WRITES = {"method": ["PUT", "DELETE"], "path": "/admin/profiles/{profile}"}


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app).exclude(**PROFILE_WRITES)


@pytest.fixture(scope="module")
def profile_writes_schema(tmp_path_factory):
    agent, _ = make_agent(tmp_path_factory.mktemp("fuzz-profiles"), MemoryEpisodeStore(), admin_token=TOKEN,
                          max_body_bytes=1 << 20)
    asyncio.run(agent.start())
    app = BodyLimit(create_app(agent), limit=agent.settings.max_body_bytes)
    return schemathesis.openapi.from_asgi("/openapi.json", app).include(**PROFILE_WRITES)


def operations(api_schema, least: int = 8) -> list:
    ops = [result.ok() for result in api_schema.get_all_operations()]
    assert len(ops) >= least, [op.label for op in ops]  # /act, episodes x3, health x2, metrics, admin x3
    return ops


# (schemathesis' own pytest plugin does not load under pytest 9, so Hypothesis drives it directly)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("schema", ["api_schema", "profile_writes_schema"])
def test_no_operation_fails_or_breaks_its_contract(schema, mode, request):
    failures: dict[str, str] = {}
    exercised = set()
    writes = schema == "profile_writes_schema"
    for op in operations(request.getfixturevalue(schema), least=2 if writes else 8):
        for token in (None, TOKEN) if op.path.startswith("/admin") else (None,):
            headers = {"Authorization": f"Bearer {token}"} if token else None

            @given(case=op.as_strategy(mode, headers=headers))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None)
            def check(case):
                case.call_and_validate()

            try:
                check()
                exercised.add(op.label)
            except Unsatisfiable:  # no input of this operation can be made invalid (e.g. GET /healthz)
                assert mode is GenerationMode.NEGATIVE, op.label
            except BaseException as exc:  # noqa: BLE001 - every failing operation is reported, not the first
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures[f"{op.label} token={bool(token)}"] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
    assert ({"PUT /admin/profiles/{profile}", "DELETE /admin/profiles/{profile}"} if writes else
            {"POST /act", "POST /episodes", "POST /admin/adapters/{name}/load"}) <= exercised, exercised


def test_stateful_episode_lifecycle(api_schema, fuzz_app):
    """Sequences of calls linked by their data (the episode id an answer returns, used next).

    Each scenario starts from an empty episode store: Hypothesis replays a scenario to shrink it, and
    a client-chosen id that an earlier scenario created would answer 409 on the replay, which it
    reports as flaky data generation (found by the long run, GLIDER_FUZZ_EXAMPLES=1000)."""
    agent = fuzz_app.agent

    class Workflow(api_schema.as_state_machine()):
        def setup(self) -> None:
            agent.store = MemoryEpisodeStore(max_episodes=100_000)

    Workflow.run(settings=settings(max_examples=max(5, EXAMPLES // 6), stateful_step_count=8, deadline=None,
                                  suppress_health_check=list(HealthCheck), derandomize=True, database=None))


def test_fuzzing_left_no_engine_or_store_damage(fuzz_app):
    """After the fuzzing, the app still serves a normal episode and every error was counted."""
    import httpx

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fuzz_app), base_url="http://t") as c:
            r = await c.post("/act", json={"task": "boil water", "observation": "hallway"})
            assert r.status_code == 200, r.text
            r2 = await c.post("/act", json={"episode_id": r.json()["episode_id"], "observation": "x", "step": 1})
            assert r2.status_code == 200 and r2.json()["step"] == 1
            return (await c.get("/metrics")).text

    metrics = asyncio.run(run())
    assert 'glider_errors_total{code="internal"}' not in metrics


def test_blank_tasks_mean_the_same_to_schema_pydantic_and_agent(fuzz_app):
    """Regression: the long fuzz run sent the task "\\x1e", which the schema's \\S accepted and the
    Agent's str.strip() refused as blank (a schema-valid request rejected)."""
    import re

    import httpx
    from glider.server.errors import InvalidInput
    from glider.v1.rest import TASK_PATTERN, EpisodeCreate
    from pydantic import ValidationError

    agent = fuzz_app.agent
    chars = [chr(c) for c in range(0x3100) if not 0xD800 <= c <= 0xDFFF] + ["\ufeff", "\uffef"]
    blank = {c for c in chars if c.isspace()} | {"\ufeff"}
    assert {"\x1c", "\x1f", "\x85", "\u3000", "\ufeff"} <= blank
    for c in chars:
        task = f"{c}{c}"
        assert (re.search(TASK_PATTERN, task) is None) == (c in blank), repr(c)
        try:
            EpisodeCreate(task=task)
            assert c not in blank, repr(c)
        except ValidationError:
            assert c in blank, repr(c)

    async def run():
        for c in sorted(blank)[:8] + ["\ufeff"]:
            with pytest.raises(InvalidInput):  # what gRPC's CreateEpisode reaches
                await agent.create_episode(f" {c} ")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fuzz_app), base_url="http://t") as client:
            r = await client.post("/episodes", json={"task": "\u001e"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
            assert (await client.post("/episodes", json={"task": "\u001eboil\u001e"})).status_code == 201

    asyncio.run(run())
