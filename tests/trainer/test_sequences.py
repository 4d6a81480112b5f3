"""Training sequences are the server's prompts: same text, same tokens, loss only on the targets."""

from __future__ import annotations

import pytest
from glider.server.policy.controller import HierarchyConfig, PolicyController
from glider.server.policy.modes import Role
from glider.trainer.data.hierarchy import annotate
from glider.trainer.sequences import (
    IGNORE,
    SequenceBuilder,
    chain,
    executor_pairs,
    flat_pairs,
    planner_pairs,
    role_sequences,
)

from tests.server.scripted import Script


async def _served_prompts(traj, ep, mode: str, cfg: HierarchyConfig) -> dict[str, list[str]]:
    """Drive the real controller through the gold path with the gold answers scripted."""
    planner, executor, flat = [], [], []
    for seg in ep.segments:
        planner.append(f" {seg.subgoal}")
        for t in range(seg.start, seg.end):
            done = t == seg.end - 1 and seg.completed
            executor.append(f" {traj.steps[t].action}; {'true' if done else 'false'}")
            flat.append(f" {traj.steps[t].action}")
    script = Script(planner=planner, executor=executor, flat=flat)
    ctl = PolicyController(cfg)
    state = ctl.new_state("e1", traj.task)
    for step in traj.steps:
        decision = await ctl.step(state, step.observation, 0.0, False, script)
        assert decision.action == step.action
        state = decision.state
    prompts: dict[str, list[str]] = {}
    for r in script.requests:
        prompts.setdefault(r.role.value, []).append(r.prompt)
    return prompts


@pytest.mark.parametrize("history_window", [6, 2])
async def test_training_prompts_are_the_controllers_prompts(gold_trajectory, history_window):
    cfg = HierarchyConfig(history_window=history_window, prompt_observation_chars=300)
    ep = annotate(gold_trajectory)
    served = await _served_prompts(gold_trajectory, ep, "separate", cfg)
    assert [p.prompt for p in planner_pairs(ep, cfg)] == served["planner"]
    assert [p.prompt for seg in executor_pairs(ep, cfg) for p in seg] == served["executor"]
    flat_cfg = HierarchyConfig(mode="flat", history_window=history_window, prompt_observation_chars=300)
    assert [p.prompt for p in flat_pairs(gold_trajectory, flat_cfg)] == \
        (await _served_prompts(gold_trajectory, ep, "flat", flat_cfg))["flat"]


def test_chaining_follows_the_append_only_prompts(gold_trajectory):
    cfg = HierarchyConfig(history_window=2)
    ep = annotate(gold_trajectory)
    # 5 subgoals, one planner sequence; the 4-step segment's window slides after 2 turns
    assert len(chain(planner_pairs(ep, cfg))) == 1
    assert [len(chain(seg)) for seg in executor_pairs(ep, cfg)] == [1, 1, 1, 2, 1]
    assert len(chain(executor_pairs(ep, HierarchyConfig(history_window=6))[2])) == 1


@pytest.mark.parametrize("backbone", ["backbone_dir", "smollm_dir"])  # our BPE, and a real pretrained one's
def test_masking_and_tokens_match_the_served_prompt(gold_trajectory, backbone, request):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(backbone))
    cfg = HierarchyConfig(history_window=3)
    ep = annotate(gold_trajectory)
    builder = SequenceBuilder(tok, max_len=4096)
    for role, pair_lists in (("planner", [planner_pairs(ep, cfg)]), ("executor", executor_pairs(ep, cfg))):
        for pairs in pair_lists:
            chains = chain(pairs)
            seqs = [s for pieces in chains for s in builder.build(pieces, role)]
            assert len(seqs) == len(chains)
            # walk the sequences: each target's preceding tokens are exactly the served prompt's tokens
            targets = iter(pairs)
            for seq in seqs:
                i = 0
                while i < len(seq):
                    if seq.labels[i] == IGNORE:
                        i += 1
                        continue
                    j = i
                    while j < len(seq) and seq.labels[j] != IGNORE:
                        j += 1
                    pair = next(targets)
                    assert seq.input_ids[:i][-len(tok(pair.prompt, add_special_tokens=False)["input_ids"]):] \
                        == tok(pair.prompt, add_special_tokens=False)["input_ids"]
                    assert tok.decode(seq.input_ids[i:j]) == pair.target
                    assert seq.labels[i:j] == seq.input_ids[i:j]
                    i = j
            assert next(targets, None) is None
    # every label is either masked or equal to its token; prompts are never in the loss
    seqs = role_sequences([ep], ["planner", "executor"], builder, cfg)
    for s in seqs:
        assert all(label in (IGNORE, tid) for label, tid in zip(s.labels, s.input_ids, strict=True))
        assert s.labels[0] == IGNORE and s.target_tokens < len(s)
    assert {s.role for s in seqs} == {Role.planner.value, Role.executor.value}


def test_targets_beyond_the_context_are_dropped_and_counted(gold_trajectory, backbone_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(backbone_dir)
    ep = annotate(gold_trajectory)
    pieces = chain(planner_pairs(ep, HierarchyConfig()))[0]
    whole = SequenceBuilder(tok, max_len=100_000).build(pieces, "planner")[0]
    last_target = len(tok(pieces[-1][0], add_special_tokens=False)["input_ids"])
    builder = SequenceBuilder(tok, max_len=len(whole) - 1)
    (cut,) = builder.build(pieces, "planner")
    assert builder.truncated == 1  # the last subgoal's prompt + target no longer fit
    assert cut.input_ids == whole.input_ids[: len(whole) - last_target]
    assert cut.target_tokens == whole.target_tokens - last_target
