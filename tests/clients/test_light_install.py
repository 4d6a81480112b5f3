"""`pip install glider` is the SDK and its contract, nothing more: an application that only talks to a
server must not pull the server, the trainer, the engines or the environments.

`deploy/install.sh` (run by `make test` and CI) builds that install in `.venv-client` beside the full
one; here it imports the SDK, plays a few steps against the real test server over REST and gRPC, and
shows that the server and trainer commands name the extra they need instead of failing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_VENV = Path(os.environ.get("GLIDER_CLIENT_VENV", ROOT / ".venv-client"))
HEAVY = ["fastapi", "uvicorn", "torch", "vllm", "transformers", "peft", "scienceworld", "textworld", "numpy",
         "pydantic_settings", "glider.server", "glider.trainer"]

PLAY = """
import json, sys
from glider.clients.sdk import GliderClient, GliderGrpcClient
from glider.v1.rest import Sampling

rest_url, grpc_target = sys.argv[1], sys.argv[2]
steps = {}
with GliderClient(rest_url) as client:
    r = client.act(observation="You are in the hallway.", task="boil water", sampling=Sampling(seed=1))
    for obs in ("The door is open.", "You are in the kitchen."):
        r = client.act(observation=obs, episode_id=r.episode_id, step=r.step + 1)
    steps["rest"] = [r.step, bool(r.action), client.get_episode(r.episode_id).sampling.seed]
with GliderGrpcClient(grpc_target) as client:
    r = client.act(observation="You are in the hallway.", task="boil water")
    r = client.act(observation="The door is open.", episode_id=r.episode_id)
    steps["grpc"] = [r.step, bool(r.action)]
heavy = json.loads(sys.argv[3])
steps["loaded"] = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print(json.dumps(steps))
"""


@pytest.fixture(scope="module")
def client_python() -> Path:
    python = CLIENT_VENV / "bin" / "python"
    assert python.is_file(), f"{CLIENT_VENV} is missing: deploy/install.sh builds it (make test does)"
    return python


def run(python: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120, env=env, cwd="/")


def test_the_base_install_has_no_server_or_trainer_packages(client_python):
    code = "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in %r}))" % [
        "httpx", "grpc", "google.protobuf", "pydantic", "fastapi", "torch", "vllm", "transformers", "scienceworld"]
    found = json.loads(run(client_python, "-c", code).stdout)
    assert found == {"httpx": True, "grpc": True, "google.protobuf": True, "pydantic": True, "fastapi": False,
                     "torch": False, "vllm": False, "transformers": False, "scienceworld": False}, found


@pytest.mark.integration
def test_the_sdk_alone_plays_over_rest_and_grpc(client_python, vllm_server):
    done = run(client_python, "-c", PLAY, vllm_server.url, vllm_server.grpc_target, json.dumps(HEAVY))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["rest"] == [2, True, 1] and out["grpc"] == [1, True]
    assert out["loaded"] == [], f"the SDK pulled in {out['loaded']}"


@pytest.mark.parametrize("command", [["serve"], ["train", "sft"], ["data", "collect"], ["demo"],
                                     ["adapters", "list"]])
def test_commands_needing_an_extra_say_which(client_python, command):
    done = run(client_python.parent / "glider", *command)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "pip install 'glider[" in done.stdout and "Traceback" not in done.stdout + done.stderr, done.stdout


@pytest.mark.parametrize("command", [[], ["train", "sft"], ["serve"], ["eval", "run"]])
def test_help_works_without_the_extras(client_python, command):
    done = run(client_python.parent / "glider", *command, "--help")
    assert done.returncode == 0 and "Usage" in done.stdout, (done.stdout, done.stderr)
