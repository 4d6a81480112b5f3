"""Grounded actions on the real servers: the command chosen is the one the executor's own model scores
highest (checked against a direct computation), and a grounded ScienceWorld episode only sends commands
from the runner's list."""

from __future__ import annotations

import pytest
from glider.clients.envs.scienceworld import ScienceWorld
from glider.clients.play import play_episode
from glider.clients.sdk import GliderClient
from glider.server.adapters.registry import AdapterRegistry
from glider.server.policy.grounding import continuation
from glider.server.policy.prompts import executor_prompt, sanitize

pytestmark = pytest.mark.integration

#: commands no untrained executor generates word for word, so the step is grounded
COMMANDS = ["open door to kitchen", "go to hallway", "pick up thermometer", "focus on red box", "look at table",
            "move metal pot to stove", "activate sink", "read the orange notebook"]
TASK, OBSERVATION = "Your task is to boil water.", "This room is called the hallway. You see a door to the kitchen."


@pytest.fixture(scope="module")
def direct_scores(backbone_dir, adapters_dir):
    """The executor's log-likelihood of each command's continuation after ``prompt``, computed here
    with transformers + peft on the adapter the servers serve."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(backbone_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone_dir, dtype=torch.float32),
                                      AdapterRegistry(adapters_dir).get("executor").path).eval()

    def scores(prompt: str) -> dict[str, float]:
        out = {}
        head = tok(prompt)["input_ids"]
        for command in COMMANDS:
            ids = head + tok(continuation(command, role_is_flat=False), add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            out[command] = float(sum(logp[i - 1, ids[i]] for i in range(len(head), len(ids))))
        return out

    return scores


@pytest.mark.parametrize("server_name", ["vllm_server", "hf_server"])
def test_an_inadmissible_generation_becomes_the_command_the_executor_scores_highest(server_name, request,
                                                                                    direct_scores):
    server = request.getfixturevalue(server_name)
    with GliderClient(server.url) as client:
        reply = client.act(observation=OBSERVATION, task=TASK, valid_actions=COMMANDS)
        client.delete_episode(reply.episode_id)
    assert reply.grounded and reply.action in COMMANDS and reply.generated_action not in COMMANDS
    prompt = executor_prompt(sanitize(TASK), reply.subgoal, [], OBSERVATION, obs_limit=600)
    scores = direct_scores(prompt)
    best = max(scores.values())
    ranked = sorted(scores.values(), reverse=True)
    # the server's choice is the best by the direct computation (float32 on both sides: within 0.01),
    # and the candidates are far enough apart that a wrong choice could not pass
    assert scores[reply.action] >= best - 0.01, (reply.action, scores)
    assert ranked[0] - ranked[-1] > 0.5, scores


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
    assert report.grounded and len(report.steps) == 4
    assert all(len(commands) > 50 for commands in world.lists[:4])  # ScienceWorld's combinations: hundreds
    for step, commands in zip(report.steps, world.lists, strict=False):
        assert step.action in commands  # byte for byte an entry of the list it was answered with
        assert step.generated_action is not None or step.grounded
