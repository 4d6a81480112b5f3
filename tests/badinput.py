"""Bad-input checks shared by the in-process API tests and the real-server integration tests.

Each check sends one kind of bad request and asserts a 4xx with a clear error
body, and that the episode it touched is exactly as it was.
"""

from __future__ import annotations

import httpx


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    assert "Traceback" not in r.text
    return body["error"]


async def start_episode(client: httpx.AsyncClient) -> dict:
    r = await client.post("/act", json={"task": "boil water", "observation": "You are in the hallway."})
    assert r.status_code == 200, r.text
    return r.json()


async def snapshot(client: httpx.AsyncClient, episode_id: str) -> dict:
    r = await client.get(f"/episodes/{episode_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def check_all(client: httpx.AsyncClient, max_observation_chars: int, max_valid_actions: int = 4096,
                    max_valid_action_chars: int = 256) -> None:
    first = await start_episode(client)
    eid = first["episode_id"]
    before = await snapshot(client, eid)

    # malformed JSON
    r = await client.post("/act", content=b'{"observation": "x", ', headers={"content-type": "application/json"})
    error_of(r, 422)
    # missing and wrong-typed fields, unknown fields, non-finite reward
    assert "observation" in error_of(await client.post("/act", json={"episode_id": eid}), 422)["message"]
    error_of(await client.post("/act", json={"episode_id": eid, "observation": 3}), 422)
    error_of(await client.post("/act", json={"episode_id": eid, "observation": "x", "reward": "lots"}), 422)
    error_of(await client.post("/act", json={"episode_id": eid, "observation": "x", "bogus": 1}), 422)
    r = await client.post("/act", content=b'{"episode_id": "%s", "observation": "x", "reward": NaN}' % eid.encode(),
                          headers={"content-type": "application/json"})
    error_of(r, 422)
    error_of(await client.post("/act", json=["not", "an", "object"]), 422)
    # a boolean is not a number (lax parsing would read false as step 0); a body that is not UTF-8
    assert "step" in error_of(await client.post("/act", json={"episode_id": eid, "observation": "x",
                                                               "step": False}), 422)["message"]
    r = await client.post("/act", content=b'{"observation": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert error_of(r, 422)["code"] == "invalid_input"
    # a new episode needs a task; episode ids have a shape
    assert error_of(await client.post("/act", json={"observation": "x"}), 422)["code"] == "invalid_input"
    error_of(await client.post("/act", json={"episode_id": "../../etc", "observation": "x"}), 422)
    # unknown episode
    assert error_of(await client.post("/act", json={"episode_id": "nope", "observation": "x"}), 404)["code"] \
        == "episode_not_found"
    error_of(await client.get("/episodes/nope"), 404)
    error_of(await client.delete("/episodes/nope"), 404)
    # observation over the limit
    big = "x" * (max_observation_chars + 1)
    assert "observation" in error_of(
        await client.post("/act", json={"episode_id": eid, "observation": big}), 422)["message"]
    # wrong expected step
    assert error_of(await client.post("/act", json={"episode_id": eid, "observation": "x", "step": 7}),
                    409)["code"] == "step_mismatch"
    # duplicate explicit id
    r = await client.post("/episodes", json={"task": "t", "episode_id": eid})
    assert error_of(r, 409)["code"] == "episode_exists"
    # an episode's sampling: only when it starts, within the contract's ranges and the server's bound
    assert "sampling" in error_of(await client.post("/act", json={
        "episode_id": eid, "observation": "x", "sampling": {"temperature": 0.5}}), 422)["message"]
    error_of(await client.post("/act", json={"task": "t", "observation": "x", "sampling": {"top_p": 0}}), 422)
    error_of(await client.post("/act", json={"task": "t", "observation": "x", "sampling": {"seed": -1}}), 422)
    error_of(await client.post("/act", json={"task": "t", "observation": "x", "sampling": {"warmth": 1}}), 422)
    assert "temperature" in error_of(await client.post("/episodes", json={
        "task": "t", "sampling": {"temperature": 1e6}}), 422)["message"]
    # admissible commands: strings, within the server's count and length
    for bad in ([1, 2], ["look", None], "look around", {"a": 1}):
        error_of(await client.post("/act", json={"episode_id": eid, "observation": "x", "valid_actions": bad}), 422)
    many = ["look"] * (max_valid_actions + 1)
    assert str(max_valid_actions) in error_of(await client.post("/act", json={
        "episode_id": eid, "observation": "x", "valid_actions": many}), 422)["message"]
    long = ["go", "x" * (max_valid_action_chars + 1)]
    assert str(max_valid_action_chars) in error_of(await client.post("/act", json={
        "episode_id": eid, "observation": "x", "valid_actions": long}), 422)["message"]
    # unknown route and method
    error_of(await client.get("/nope"), 404)
    error_of(await client.get("/act"), 405)

    assert await snapshot(client, eid) == before, "a refused request changed the episode"

    # finishing, then stepping a finished episode
    r = await client.post("/act", json={"episode_id": eid, "observation": "end", "reward": 1.0, "done": True})
    assert r.status_code == 200 and r.json()["action"] is None and r.json()["done"] is True
    finished = await snapshot(client, eid)
    assert finished["status"] == "finished"
    assert error_of(await client.post("/act", json={"episode_id": eid, "observation": "x"}), 409)["code"] \
        == "episode_finished"
    assert await snapshot(client, eid) == finished
