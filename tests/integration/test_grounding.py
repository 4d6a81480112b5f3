"""Grounded actions on the real servers: the command chosen is the one the executor's own model scores
highest (checked against a direct computation), and a grounded ScienceWorld episode only sends commands
from the runner's list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from glider.clients.envs.scienceworld import ScienceWorld
from glider.clients.play import play_episode
from glider.clients.sdk import GliderClient
from glider.server.adapters.registry import AdapterRegistry
from glider.server.policy.grounding import continuation, deciding_prefixes
from glider.server.policy.prompts import executor_prompt, sanitize

pytestmark = pytest.mark.integration

#: commands no untrained executor generates word for word, so the step is grounded
COMMANDS = ["open door to kitchen", "go to hallway", "pick up thermometer", "focus on red box", "look at table",
            "move metal pot to stove", "activate sink", "read the orange notebook"]
TASK, OBSERVATION = "Your task is to boil water.", "This room is called the hallway. You see a door to the kitchen."


@pytest.fixture(scope="module")
def executor_at(backbone_dir):
    """The executor a server serves, computed here with transformers + peft from the adapter's files:
    the next-token log-probabilities after a text (one model per adapter directory)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, models = AutoTokenizer.from_pretrained(backbone_dir), {}

    def load(adapter_dir: Path):
        if adapter_dir not in models:
            base = AutoModelForCausalLM.from_pretrained(backbone_dir, dtype=torch.float32)
            models[adapter_dir] = PeftModel.from_pretrained(base, adapter_dir).eval()
        model = models[adapter_dir]

        def logprobs(ids: list[int]):
            with torch.inference_mode():
                return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)

        return tok, logprobs

    return load


def most_likely(executor, prompt: str, continuations: list[str]) -> tuple[str, float]:
    """The continuation with the highest log-likelihood (its canonical tokens after the prompt's), and
    its margin over the runner-up."""
    tok, logprobs = executor
    head = tok(prompt)["input_ids"]
    scores = {}
    for c in continuations:
        ids = head + tok(c, add_special_tokens=False)["input_ids"]
        lp = logprobs(ids)
        scores[c] = float(sum(lp[i - 1, ids[i]] for i in range(len(head), len(ids))))
    ranked = sorted(scores.values(), reverse=True)
    return max(scores, key=scores.get), ranked[0] - ranked[1]


def constrained_greedy(executor, prompt: str, continuations: list[str]) -> tuple[str, float]:
    """Greedy decoding constrained to the continuations, as vLLM's structured outputs do it: at each
    step the most likely token among those that keep the text a prefix of some continuation; and the
    smallest margin between the chosen token and the runner-up on the way."""
    tok, logprobs = executor
    ids, text, margin = tok(prompt)["input_ids"], "", float("inf")
    special = set(tok.all_special_ids)
    pieces = {t: tok.decode([t]) for t in range(len(tok)) if t not in special}
    while text not in continuations:
        allowed = [t for t, p in pieces.items() if p and any(c.startswith(text + p) for c in continuations)]
        lp = logprobs(ids)[-1]
        ranked = sorted(allowed, key=lambda t: float(lp[t]), reverse=True)
        if len(ranked) > 1:
            margin = min(margin, float(lp[ranked[0]] - lp[ranked[1]]))
        ids.append(ranked[0])
        text += pieces[ranked[0]]
    return text, margin


@pytest.mark.parametrize(("server_name", "registry_name"), [
    ("vllm_server", "adapters_dir"), ("hf_server", "adapters_dir"), ("swap_server", "swap_registry")])
def test_an_inadmissible_generation_becomes_the_command_the_executor_chooses(server_name, registry_name, request,
                                                                            executor_at):
    """vLLM decodes greedily constrained to the candidates; transformers takes the most likely one, and so
    does vLLM told to score (the swap server: GLIDER_GROUNDING_METHOD=score, from next-token logprobs
    over the candidates' trie): each server's choice is checked against the same computation done here
    on the adapter version that chose."""
    server = request.getfixturevalue(server_name)
    with GliderClient(server.url) as client:
        reply = client.act(observation=OBSERVATION, task=TASK, valid_actions=COMMANDS)
        client.delete_episode(reply.episode_id)
    assert reply.grounded and reply.action in COMMANDS and reply.generated_action not in COMMANDS
    registry = AdapterRegistry(request.getfixturevalue(registry_name))
    executor = executor_at(registry.get("executor", reply.adapter_versions["executor"]).path)
    prompt = executor_prompt(sanitize(TASK), reply.subgoal, [], OBSERVATION, obs_limit=600)
    continuations = [continuation(c, role_is_flat=False) for c in COMMANDS]
    choose = constrained_greedy if server_name == "vllm_server" else most_likely
    expected, margin = choose(executor, prompt, continuations)
    # float32 on both sides: a choice decided by less than this could go either way, and is not a test
    assert margin > 1e-4, (expected, margin)
    assert continuation(reply.action, role_is_flat=False) == expected
    if server_name == "vllm_server":  # the engine stopped once the first word decided the command
        trace = Path(server.settings_env["GLIDER_TRACE_REQUESTS"]).read_text().splitlines()
        choice = [r for r in map(json.loads, trace) if r["choices"] and r["prompt"] == prompt][-1]
        whole = len(executor[0](expected, add_special_tokens=False)["input_ids"])
        assert sorted(choice["stop"]) == sorted(p for p in deciding_prefixes(continuations) if p)
        assert choice["stop_reason"] in choice["stop"] and choice["completion_tokens"] < whole


def test_a_grounded_scienceworld_episode_sends_only_commands_from_the_runner_s_list(vllm_server, scienceworld):
    class Recording(ScienceWorld):
        """The runner, remembering the list it gave with each observation."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lists: list[list[str]] = []

        def reset(self):
            step = super().reset()
            self.lists.append(step.valid_actions)
            return step

        def step(self, action):
            step = super().step(action)
            self.lists.append(step.valid_actions)
            return step

    world = Recording("find-plant", 0, env=scienceworld, grounded=True)
    with GliderClient(vllm_server.url) as client:
        report = play_episode(client, world, max_steps=4, grounded=True)
    # four steps, or fewer when the environment ended the episode (a trained executor may "focus on"
    # the wrong object, which ends a ScienceWorld episode): each step played is checked either way
    assert report.grounded and report.steps and (len(report.steps) == 4 or report.done)
    assert all(len(commands) > 50 for commands in world.lists[:len(report.steps)])  # the combinations: hundreds
    for step, commands in zip(report.steps, world.lists, strict=False):
        assert step.action in commands  # byte for byte an entry of the list it was answered with
        assert step.generated_action is not None or step.grounded
