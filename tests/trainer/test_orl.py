"""ORL: the critic's equations against hand values, decisions per level, and a text MDP where RL must beat BC."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from glider.server.policy.controller import HierarchyConfig
from glider.trainer.critic import (
    Critic,
    CriticConfig,
    Transitions,
    awr_weights,
    expectile_loss,
    polyak_update,
    td_target,
)
from glider.trainer.data.hierarchy import (
    IntrinsicReward,
    SegmentationConfig,
    annotate,
    subgoal_reward,
)
from glider.trainer.data.schema import Step, Trajectory
from glider.trainer.sequences import Decision, SequenceBuilder, role_decisions


def test_expectile_loss_matches_hand_values():
    diff = torch.tensor([1.0, -2.0])
    assert expectile_loss(diff, 0.9).item() == pytest.approx((0.9 * 1 + 0.1 * 4) / 2)
    assert expectile_loss(diff, 0.5).item() == pytest.approx((0.5 * 1 + 0.5 * 4) / 2)  # τ = 0.5: half the MSE
    # the minimiser of the τ-expectile over {0, 1} sampled 80/20 is 0.9·0.2 / (0.9·0.2 + 0.1·0.8) = 0.6923
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    samples = torch.tensor([0.0] * 8 + [1.0] * 2)
    for _ in range(500):
        opt.zero_grad()
        expectile_loss(samples - v, 0.9).backward()
        opt.step()
    assert v.item() == pytest.approx(0.18 / 0.26, abs=1e-3)


def test_td_target_discounts_and_stops_at_terminals():
    target = td_target(torch.tensor([1.0, 0.5, 0.0]), torch.tensor([2.0, 3.0, 1.0]), torch.tensor([0.0, 1.0, 0.0]),
                       torch.tensor([0.9, 0.99, 0.99 ** 3]))
    assert target.tolist() == pytest.approx([1.0 + 0.9 * 2.0, 0.5, 0.99 ** 3])


def test_awr_weights_exponentiate_and_clip():
    w = awr_weights(torch.tensor([0.0, 0.1, -0.1, 10.0, 1e6]), lam=0.1, max_weight=20.0)
    assert w.tolist() == pytest.approx([1.0, math.e, 1 / math.e, 20.0, 20.0], rel=1e-5)
    assert torch.isfinite(w).all()  # a huge advantage is clipped before exp, never inf
    assert awr_weights(torch.tensor([1.0]), lam=0.1, max_weight=None).item() == pytest.approx(math.exp(10))


def test_polyak_moves_the_target_by_rho():
    source, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    torch.nn.init.ones_(source.weight), torch.nn.init.zeros_(target.weight)
    polyak_update(target, source, 0.2)
    assert target.weight.detach().flatten().tolist() == pytest.approx([0.2, 0.2])
    polyak_update(target, source, 0.2)
    assert target.weight.detach().flatten().tolist() == pytest.approx([0.36, 0.36])
    assert source.weight.detach().tolist() == [[1.0, 1.0]]  # the online net is untouched


def test_critic_learns_a_chain_by_td_and_the_advantage_ranks_actions():
    """s0 --a--> s1 (r=0) --good--> end (r=1) | --bad--> end (r=0), one-hot features: values by hand."""
    eye = torch.eye(4)
    # decisions: 0 = (s0, a), 1 = (s1, good), 2 = (s0, a), 3 = (s1, bad)
    state = torch.stack([eye[0], eye[1], eye[0], eye[1]])
    utterance = torch.stack([eye[2], eye[3], eye[2], 0.5 * eye[3] - 0.5 * eye[2]])
    decisions = [Decision(0.0, False, 1, next=1), Decision(1.0, True), Decision(0.0, False, 1, next=3),
                 Decision(0.0, True)]
    data = Transitions.build(state, utterance, decisions, gamma=0.9)
    critic = Critic(4, CriticConfig(expectile=0.5, steps=3000, lr=3e-3, polyak=0.1, hidden=32, batch_size=4))
    critic.fit(data)
    with torch.no_grad():
        q = critic.q(data.utterance).squeeze(-1)
        v = critic.v(data.state).squeeze(-1)
    # τ = 0.5: V(s1) = mean(Q(good), Q(bad)) = 0.5; Q(s0, a) = 0.9 · V(s1) = 0.45 = V(s0)
    assert q[1].item() == pytest.approx(1.0, abs=0.05) and q[3].item() == pytest.approx(0.0, abs=0.05)
    assert v[1].item() == pytest.approx(0.5, abs=0.05)
    assert q[0].item() == pytest.approx(0.45, abs=0.05) and v[0].item() == pytest.approx(0.45, abs=0.05)
    adv = critic.advantages(data)
    assert adv[1] > 0.4 and adv[3] < -0.4
    weights = critic.actor_weights(data)
    assert weights[1] > 10 * weights[3] and weights.mean().item() == pytest.approx(1.0)


def test_monte_carlo_advantage_is_the_observed_return_against_an_expectile_v():
    """The same chain, advantage "mc": no Q head; V(s) is the τ-expectile of the returns that left s, and
    A = G − V(s) ranks good above bad at s1 and gives each s0 decision its own episode's outcome."""
    eye = torch.eye(4)
    state = torch.stack([eye[0], eye[1], eye[0], eye[1]])
    decisions = [Decision(0.0, False, 1, next=1), Decision(1.0, True), Decision(0.0, False, 1, next=3),
                 Decision(0.0, True)]
    data = Transitions.build(state, state, decisions, gamma=0.9)
    assert data.returns.tolist() == pytest.approx([0.9, 1.0, 0.0, 0.0])
    for tau, v1 in ((0.5, 0.5), (0.8, 0.8)):  # the τ-expectile of {1, 0}: τ
        critic = Critic(4, CriticConfig(advantage="mc", expectile=tau, steps=3000, lr=3e-3, hidden=32, batch_size=4))
        assert critic.q is None
        critic.fit(data)
        with torch.no_grad():
            v = critic.v(data.state).squeeze(-1)
        assert v[1].item() == pytest.approx(v1, abs=0.05) and v[0].item() == pytest.approx(0.9 * v1, abs=0.05)
        adv = critic.advantages(data)
        assert adv.tolist() == pytest.approx((data.returns - v).tolist())
        assert adv[1] > 0 > adv[3] and adv[0] > 0 > adv[2]
    with pytest.raises(ValueError, match="td | mc"):
        CriticConfig(advantage="bootstrap")


def test_ac_critic_uses_the_td_error_as_advantage():
    eye = torch.eye(2)
    data = Transitions.build(eye, eye, [Decision(1.0, True), Decision(0.0, True)], gamma=0.99)
    critic = Critic(2, CriticConfig(kind="ac", steps=0))
    assert critic.q is None
    with torch.no_grad():
        expected = data.reward - critic.v(data.state).squeeze(-1)
    assert critic.advantages(data).tolist() == pytest.approx(expected.tolist())


def test_decisions_per_level_carry_rewards_steps_and_links(gold_trajectory, backbone_dir):
    from transformers import AutoTokenizer

    ep = annotate(gold_trajectory, cfg=SegmentationConfig(method="score", max_len=10))
    tok = AutoTokenizer.from_pretrained(backbone_dir)
    cfg = HierarchyConfig()
    seqs, planner = role_decisions([ep], "planner", SequenceBuilder(tok, 4096), cfg)
    assert len(planner) == len(ep.segments) == sum(len(s.spans) for s in seqs)
    assert sum(d.reward for d in planner) == pytest.approx(sum(s.reward for s in gold_trajectory.steps))
    assert [d.steps for d in planner] == [seg.end - seg.start for seg in ep.segments]
    assert [d.next for d in planner] == [*range(1, len(planner)), -1] and planner[-1].done
    _, executor = role_decisions([ep], "executor", SequenceBuilder(tok, 4096), cfg)
    assert len(executor) == len(gold_trajectory.steps)
    ends = [d for d in executor if d.done]
    kappa = IntrinsicReward().step_cost
    # gold: every subgoal completes (1 at its end); every step costs κ
    assert len(ends) == len(ep.segments) and all(d.reward == pytest.approx(1.0 - kappa) for d in ends)
    assert all(d.reward == pytest.approx(-kappa) for d in executor if not d.done)
    assert {d.source for d in executor} == {"gold"}
    _, free = role_decisions([ep], "executor", SequenceBuilder(tok, 4096), cfg, IntrinsicReward(step_cost=0.0))
    assert [d.reward for d in free if d.done] == [1.0] * len(ep.segments) and sum(d.reward for d in free) == len(ends)
    # a span's tokens are exactly its target's tokens
    seq = seqs[0]
    start, end = seq.spans[0]
    assert tok.decode(seq.input_ids[start:end]).strip() == ep.segments[0].subgoal
    # the context cap cuts a chain: its decisions end there (no successor is invented)
    _, short = role_decisions([ep], "planner", SequenceBuilder(tok, 200), cfg)
    assert 0 < len(short) < len(planner) and short[-1].next == -1


def test_subgoal_reward_marks_failure_and_unfinished_segments():
    def traj(source, rewards, scores, done_marker=None):
        return Trajectory(id="x", task="t", source=source, steps=[
            Step(observation="o", action="a", reward=r, score=s, subgoal_done=done_marker) for r, s in zip(
                rewards, scores, strict=True)])

    from glider.trainer.data.hierarchy import SubgoalSegment

    seg = SubgoalSegment("g", 0, 2)
    assert subgoal_reward(traj("perturbed", [0.0, 0.1], [0.0, 0.1]), seg) == 1.0  # reached a milestone
    assert subgoal_reward(traj("perturbed", [0.0, 0.0], [0.0, 0.0]), seg) == 0.0  # ran out of steps
    assert subgoal_reward(traj("perturbed", [0.1, -1.1], [0.1, -1.0]), seg) == -1.0  # failed the task
    assert subgoal_reward(traj("server", [0.0, 0.0], [0.0, 0.0], done_marker=True), seg) == 1.0
    assert subgoal_reward(traj("server", [0.0, 0.0], [0.0, 0.0], done_marker=False), seg) == 0.0
    # r̂ per step: −κ on each, the outcome's value added on the last
    r = IntrinsicReward(step_cost=0.1, unreached=-0.5)
    assert r.per_step(traj("perturbed", [0.0, 0.1], [0.0, 0.1]), seg) == pytest.approx([-0.1, 0.9])
    assert r.per_step(traj("perturbed", [0.0, 0.0], [0.0, 0.0]), seg) == pytest.approx([-0.1, -0.6])
    assert r.per_step(traj("perturbed", [0.1, -1.1], [0.1, -1.0]), seg) == pytest.approx([-0.1, -1.1])


def test_observed_returns_follow_the_links_and_stop_at_ends():
    from glider.trainer.critic import observed_returns

    # a 3-decision chain (the middle one spans 2 steps) and a lone terminal decision
    chain = [Decision(reward=0.0, done=False, next=1), Decision(reward=0.5, done=False, steps=2, next=2),
             Decision(reward=1.0, done=True), Decision(reward=-1.0, done=True)]
    g = 0.9
    assert observed_returns(chain, g).tolist() == pytest.approx(
        [0.9 * (0.5 + 0.81 * 1.0), 0.5 + 0.81 * 1.0, 1.0, -1.0])
    cut = [Decision(reward=0.2, done=False, next=-1)]  # the successor was cut at the context length
    assert observed_returns(cut, g).tolist() == pytest.approx([0.2])


def test_effective_sample_size_and_rank_correlation_match_hand_values():
    from glider.trainer.critic import effective_sample_size, rank_correlation

    assert effective_sample_size(torch.ones(5)) == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert effective_sample_size(torch.tensor([1.0, 3.0])) == pytest.approx(16 / 20)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(x, x * 10 + 3) == pytest.approx(1.0)
    assert rank_correlation(x, -x.exp()) == pytest.approx(-1.0)  # ranks, not values
    # ties take their average rank: y ranks (0.5, 0.5, 2, 3), Spearman's ρ by hand = 0.9487
    assert rank_correlation(x, torch.tensor([0.0, 0.0, 1.0, 2.0])) == pytest.approx(3 / math.sqrt(10), abs=1e-4)
    assert rank_correlation(x, torch.zeros(4)) is None  # a constant has no ranking


# --- a tiny text MDP where the right answer is known ----------------------------------------------
TASK = "Your task is to get rich. Take the most valuable thing in the vault."
HALL = "You are in the hallway. A door leads to the vault."
VAULT = "You are in the vault. A rock and a coin lie on the floor."


def _vault_episode(i: int, coin: bool) -> Trajectory:
    """go to vault (r=0), then take coin (r=1, rare in the data) or take rock (r=0, frequent)."""
    reward = 1.0 if coin else 0.0
    return Trajectory(id=f"vault/{i}", env="synthetic", task_name="vault", variation=i, source="synthetic",
                      task=TASK, steps=[
                          Step(observation=HALL, action="go to vault", reward=0.0, score=0.0),
                          Step(observation=VAULT, action="take coin" if coin else "take rock", reward=reward,
                               score=reward, done=True)], final_observation="Done.")


def _logprob(model, tokenizer, prompt: str, target: str) -> float:
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    t = tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + t])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p) - 1:-1].float().log_softmax(-1)
    return float(logits.gather(-1, torch.tensor(t)[:, None]).sum())


def _choice_margin(model_dir, adapter_dir) -> float:
    """log π(take coin) − log π(take rock) in the vault, under the flat prompt the server builds."""
    from glider.trainer.sequences import flat_pairs
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter_dir)).eval()
    prompt = flat_pairs(_vault_episode(0, True), HierarchyConfig(mode="flat"))[1].prompt
    return _logprob(model, tok, prompt, " take coin\n") - _logprob(model, tok, prompt, " take rock\n")


def _vault_backbone(tiny_model_dir, tmp_path):
    """A copy of the tiny backbone that knows the vault's words, as the real backbone is warmed on its
    environment's transcripts (both endings equally often: the warmed model itself has no preference)."""
    import shutil

    from glider.trainer.training import TrainConfig
    from glider.trainer.warmup import warmup_backbone

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    warmup_backbone(model_dir, [_vault_episode(i, coin=i % 2 == 0) for i in range(8)],
                    TrainConfig(lr=3e-3, max_steps=80, warmup_steps=5, progress=False, checkpoint_every=1000),
                    tmp_path / "warmup")
    return model_dir


def test_orl_prefers_the_high_return_action_where_bc_copies_the_frequent_one(tiny_model_dir, tmp_path):

    from glider.trainer.orl import ORLConfig, run_orl
    from glider.trainer.sft import SFTConfig, run_sft
    from glider.trainer.training import TrainConfig

    model_dir = _vault_backbone(tiny_model_dir, tmp_path)
    data = [_vault_episode(i, coin=i % 5 == 0) for i in range(40)]  # 20% coin, 80% rock
    train = TrainConfig(lr=3e-3, max_steps=60, batch_tokens=4096, warmup_steps=5, progress=False,
                        checkpoint_every=1000)
    sft = SFTConfig(mode="flat", val_fraction=0.0, train=train)
    sft.lora.r, sft.lora.alpha = 8, 16
    run_sft(model_dir, data, tmp_path / "sft", sft)
    bc_margin = _choice_margin(model_dir, tmp_path / "sft" / "flat" / "adapter")

    orl = ORLConfig(mode="flat", init="scratch", actor=train, critic_every=20, heldout_fraction=0.0,
                    critic=CriticConfig(steps=600, lr=3e-3, hidden=64, batch_size=32))
    orl.lora.r, orl.lora.alpha = 8, 16
    metrics = run_orl(model_dir, data, tmp_path / "orl", orl, progress=False)
    orl_margin = _choice_margin(model_dir, tmp_path / "orl" / "flat" / "adapter")
    stats = metrics.adapters["flat"].roles["flat"]
    assert stats.weights.decisions == 80 and stats.reward_sum == pytest.approx(8.0)
    assert bc_margin < 0, f"BC should copy the frequent rock ({bc_margin:.2f})"
    assert orl_margin > 0, f"ORL should prefer the coin ({orl_margin:.2f}); {stats}"
    assert (tmp_path / "orl" / "flat" / "critic-flat.safetensors").is_file()


# --- a two-segment text MDP: the way to the vault (direct, or with a detour), then the coin ---------
VAULT_OPEN = "You are in the vault. A coin lies on the floor."


def _two_segment_episode(i: int, detour: bool):
    from glider.trainer.data.hierarchy import HierarchicalEpisode, SubgoalSegment

    way = [Step(observation=HALL, action="look around", reward=0.0, score=0.0)] if detour else []
    way.append(Step(observation=HALL, action="go to vault", reward=0.5, score=0.5))
    traj = Trajectory(id=f"two/{i}", env="synthetic", task_name="two", variation=i, source="gold", task=TASK,
                      steps=[*way, Step(observation=VAULT_OPEN, action="take coin", reward=0.5, score=1.0,
                                        done=True)], final_observation="Done.")
    n = len(way)
    return HierarchicalEpisode(traj, [SubgoalSegment("go to the vault", 0, n), SubgoalSegment("take the coin", n, n + 1)])


@pytest.mark.parametrize("advantage", ["mc", "td"])
def test_a_detour_inside_a_segment_gets_a_lower_executor_advantage(tiny_model_dir, advantage):
    """Both critics: ORL's default (the observed return against the expectile V; the gap is then the
    step cost κ plus a step's discount, so it fails without κ) and the paper's TD Q/V pair at the
    default Polyak rate with the authors' other expectile, τ 0.75 (at their Polyak 0.2 its fit does not
    converge here and the detour ranks first)."""
    from glider.trainer.orl import ORLConfig, critic_and_weights, load_policy
    from glider.trainer.sft import sft_lora
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    episodes = [_two_segment_episode(i, detour=i % 2 == 1) for i in range(8)]
    seqs, decisions = role_decisions(episodes, "executor", SequenceBuilder(tok, 4096), HierarchyConfig())
    # per episode: the first segment's decisions (1 direct, 2 with the detour), then the coin
    firsts = [0]
    for ep in episodes[:-1]:
        firsts.append(firsts[-1] + len(ep.traj.steps))
    model = load_policy(tiny_model_dir, adapter=None, lora=sft_lora())
    _, _, adv, _, _ = critic_and_weights(model, seqs, decisions, tok.pad_token_id,
                                         dataclasses.replace(ORLConfig().critic if advantage == "mc" else CriticConfig(expectile=0.75),
                                                             steps=1500, lr=3e-3, hidden=64, batch_size=32),
                                         progress=False)
    # the same prompt (the hallway, nothing done yet): "go to vault" directly, or "look around" first
    direct = [float(adv[firsts[i]]) for i in range(0, 8, 2)]
    detour = [float(adv[firsts[i]]) for i in range(1, 8, 2)]
    assert max(detour) + 0.025 < min(direct), (direct, detour)


def test_alternating_rounds_recompute_the_weights_and_the_margin_grows(tiny_model_dir, tmp_path):

    from glider.trainer.orl import ORLConfig, run_orl
    from glider.trainer.training import TrainConfig

    model_dir = _vault_backbone(tiny_model_dir, tmp_path)
    data = [_vault_episode(i, coin=i % 5 == 0) for i in range(40)]
    actor = TrainConfig(lr=5e-4, max_steps=20, batch_tokens=4096, warmup_steps=5, progress=False,
                        checkpoint_every=1000)
    orl = ORLConfig(mode="flat", init="scratch", actor=actor, critic_every=10, heldout_fraction=0.25,
                    critic=CriticConfig(steps=300, lr=3e-3, hidden=64, batch_size=32))
    orl.lora.r, orl.lora.alpha = 8, 16
    first = run_orl(model_dir, data, tmp_path / "orl", orl, progress=False)
    margin_first = _choice_margin(model_dir, tmp_path / "orl" / "flat" / "adapter")
    orl.actor.max_steps = 60  # the same run, extended: it resumes and goes on alternating
    more = run_orl(model_dir, data, tmp_path / "orl", orl, progress=False)
    margin_more = _choice_margin(model_dir, tmp_path / "orl" / "flat" / "adapter")

    rounds = more.adapters["flat"].roles["flat"].rounds
    epochs = [r.epoch for r in rounds]
    assert {r.epoch for r in first.adapters["flat"].roles["flat"].rounds} <= set(epochs)  # the resumed run's too
    assert len(rounds) >= 3 and epochs == sorted(set(epochs)) and all(e % 10 == 0 for e in epochs), epochs
    assert len({(r.weights.advantage_mean, r.weights.weight_max) for r in rounds}) == len(rounds)  # recomputed
    saved = json.loads((tmp_path / "orl" / "orl_metrics.json").read_text())
    assert saved["config"]["critic_every"] == 10  # a resumed run and the benches compare schedules by it
    assert 0 < rounds[-1].weights.effective_sample_size < 1
    assert set(rounds[-1].by_source) == {"synthetic"} and rounds[-1].by_source["synthetic"].decisions == \
        rounds[-1].weights.decisions
    assert 0 < more.heldout_trajectories < 40 and rounds[-1].weights.decisions == 2 * (40 - more.heldout_trajectories)
    ranking = rounds[-1].heldout
    assert ranking.decisions == 2 * more.heldout_trajectories and ranking.rank_correlation > 0.3, ranking
    assert first.adapters["flat"].training.steps == 20 and more.adapters["flat"].training.steps == 60
    assert 0 < margin_first < margin_more, (margin_first, margin_more)
    # run again once it is done: it redoes round 0 only and still reports every round of the run
    again = run_orl(model_dir, data, tmp_path / "orl", orl, progress=False).adapters["flat"].roles["flat"].rounds
    assert [r.epoch for r in again] == epochs
    assert [dataclasses.asdict(r) for r in again[1:]] == json.loads(json.dumps([dataclasses.asdict(r) for r in rounds[1:]]))


def test_orl_and_o2o_commands_reject_bad_options_clearly(tmp_path):
    from glider.clients.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    bad_init = runner.invoke(app, ["train", "orl", "--init", "nope", "--data", str(tmp_path)])
    assert bad_init.exit_code == 2 and "sft | scratch" in bad_init.output
    no_data = runner.invoke(app, ["train", "orl", "--data", str(tmp_path), "--perturbed", str(tmp_path)])
    assert no_data.exit_code == 2 and "glider data collect" in no_data.output
    bad_method = runner.invoke(app, ["train", "o2o", "--method", "ppo"])
    assert bad_method.exit_code == 2 and "'ppo'" in bad_method.output and "'awac'" in bad_method.output
    bad_tasks = runner.invoke(app, ["train", "o2o", "--tasks", "find-unicorn"])
    assert bad_tasks.exit_code == 2 and "find-unicorn" in bad_tasks.output
    bad_iterations = runner.invoke(app, ["train", "o2o", "--iterations", "-1"])
    assert bad_iterations.exit_code == 2 and "until stopped" in bad_iterations.output
    bad_advantage = runner.invoke(app, ["train", "orl", "--advantage", "bootstrap"])
    assert bad_advantage.exit_code == 2 and "td | mc" in bad_advantage.output
    no_critic = runner.invoke(app, ["train", "orl", "--critic-every", "0"])
    assert no_critic.exit_code == 2 and "--critic-every" in no_critic.output
    bad_eval = runner.invoke(app, ["train", "o2o", "--eval-episodes", "-1"])
    assert bad_eval.exit_code == 2 and "no evaluation" in bad_eval.output
    bad_eps = runner.invoke(app, ["data", "collect", "--perturb", "1.5", "--out", str(tmp_path)])
    assert bad_eps.exit_code == 2 and "[0, 1)" in bad_eps.output


def test_training_into_a_profile_needs_one_that_exists_has_adapters_and_serves_the_mode(tmp_path):
    from glider.clients.cli import app
    from glider.server.policy.modes import PolicyMode
    from glider.server.profiles import ProfileSpec, ProfileStore
    from typer.testing import CliRunner

    store = ProfileStore(tmp_path / "adapters", ProfileSpec())
    store.put("react", ProfileSpec(adapters=False))
    store.put("flatty", ProfileSpec(mode=PolicyMode.flat))
    runner = CliRunner(env={"GLIDER_ADAPTERS": str(tmp_path / "adapters")})
    base = ["--data", str(tmp_path / "no-data")]

    def refused(*args: str) -> str:  # the error panel's text, unwrapped
        result = runner.invoke(app, ["train", *args])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.replace("│", " ").split())

    missing = refused("sft", *base, "--profile", "nope")
    assert "no profile named 'nope'" in missing and "PUT /admin/profiles/nope" in missing
    assert "no adapters to train" in refused("orl", *base, "--profile", "react")
    assert "serves the flat mode, not separate" in refused("sft", *base, "--profile", "flatty")
    assert "no adapters to train" in refused("o2o", "--profile", "react")
    assert store.names() == ["default", "flatty", "react"]  # nothing created by the refusals


def test_area_under_the_curve_weights_each_iteration_by_its_episodes():
    from glider.trainer.online import IterationPoint, area_under_curve

    curve = [IterationPoint.from_json({"iteration": i, "episodes": n, "score": s, "best": s, "tasks": {}, "versions": {},
                                       "play_s": 0, "train_s": 0, "swap_s": 0})
             for i, (n, s) in enumerate([(4, 0.1), (8, 0.3), (16, 0.5)])]
    assert area_under_curve(curve) == pytest.approx(100 * (0.1 * 4 + 0.3 * 4 + 0.5 * 8) / 16)
    assert math.isnan(area_under_curve([]))


def test_area_with_ci_and_paired_difference_over_the_same_schedule():
    from glider.trainer.online import IterationPoint, area_under_curve, area_with_ci, paired_area

    def curve(scores):
        points = []
        for i, per_episode in enumerate(scores):
            places = {f"{i}/{task}/{k}": s for k, (task, s) in enumerate(per_episode)}
            points.append(IterationPoint(iteration=i, episodes=2 * (i + 1), score=sum(places.values()) / 2, best=0.0,
                                         tasks={}, versions={}, play_s=0, train_s=0, swap_s=0,
                                         episode_scores=places))
        return points

    a = curve([[("boil", 0.0), ("melt", 0.2)], [("boil", 0.1), ("melt", 0.3)]])
    b = curve([[("boil", 0.1), ("melt", 0.3)], [("boil", 0.2), ("melt", 0.4)]])  # every episode 10 points better
    auc = area_with_ci(a)
    assert auc.mean == pytest.approx(area_under_curve(a)) == pytest.approx(15.0) and auc.episodes == 4
    assert auc.low < auc.mean < auc.high
    diff = paired_area(a, b).difference
    assert diff.mean == pytest.approx(10.0) and diff.low == pytest.approx(10.0) and diff.high == pytest.approx(10.0)


def test_seeds_pool_their_episodes_and_pair_place_by_place_and_the_greedy_curve_is_its_own():
    from glider.trainer.online import (
        IterationPoint,
        area_with_ci,
        curve_episodes,
        paired_area,
        seed_areas,
        seed_blocked_area,
    )

    def curve(online: float, greedy: float):
        return [IterationPoint(iteration=i, episodes=2 * (i + 1), score=online, best=online, tasks={}, versions={},
                               play_s=0, train_s=0, swap_s=0,
                               episode_scores={f"{i}/boil/{2 * i}": online, f"{i}/melt/{2 * i}": online},
                               eval_scores={"boil/0": greedy, "melt/0": greedy}) for i in range(2)]

    a = {0: curve(0.1, 0.2), 1: curve(0.3, 0.4)}
    b = {0: curve(0.2, 0.2), 1: curve(0.3, 0.6)}
    pooled = curve_episodes(a)
    assert len(pooled) == 8 and pooled[("boil", "1/boil/2/seed1")] == pytest.approx(30.0)
    greedy = curve_episodes(a, greedy=True)  # the greedy places carry their iteration: 2 evaluations per seed
    assert len(greedy) == 8 and greedy[("melt", "1/melt/0/seed0")] == pytest.approx(20.0)
    assert area_with_ci(a).mean == pytest.approx(20.0) and area_with_ci(a, greedy=True).mean == pytest.approx(30.0)
    # seed 0 gains 10 online and nothing greedy; seed 1 nothing online and 20 greedy: paired place by place
    online, on_greedy = paired_area(a, b).difference, paired_area(a, b, greedy=True).difference
    assert online.mean == pytest.approx(5.0) and online.episodes == 8
    assert on_greedy.mean == pytest.approx(10.0) and 0.0 <= on_greedy.low < 10.0 < on_greedy.high <= 20.0
    assert curve(0.1, 0.5)[0].eval_score == pytest.approx(0.5)
    # seeds as blocks: one AUC per seed, and a t interval over the two seeds' differences (10 and 0 online)
    assert seed_areas(a) == pytest.approx({0: 10.0, 1: 30.0})
    blocked = seed_blocked_area(a, b)
    assert blocked.mean == pytest.approx(5.0) and blocked.episodes == 2
    assert blocked.high - blocked.mean == pytest.approx(12.7062 * 5.0, rel=1e-4)  # t(0.975, 1) · sd/√2
    assert blocked.high - blocked.mean > online.high - online.mean  # wider than the pooled episodes claim


def test_curves_written_by_earlier_versions_load_with_the_learners_report():
    from glider.trainer.o2o import ActorUpdate, CriticUpdate
    from glider.trainer.online import IterationPoint

    base = {"iteration": 0, "episodes": 2, "score": 0.1, "best": 0.2, "tasks": {}, "versions": {"planner": "v2"},
            "play_s": 1, "train_s": 2, "swap_s": 0.5}
    critic = {"decisions": 7, "critic_loss": {"q_loss": 0.5}, "advantage_std": 0.1}
    actor = {"actor_steps": 16, "actor_loss": 1.5}
    layouts = [{**base, "new_episodes": 2, "roles": {"planner": critic}, "planner": actor},  # report at the top
               {**base, "update": {"new_episodes": 2, "roles": {"planner": critic}, "planner": actor}},
               {**base, "update": {"new_episodes": 2, "critics": {"planner": critic}, "actors": {"planner": actor}}}]
    for layout in layouts:
        point = IterationPoint.from_json(layout)
        update = point.update
        assert update.new_episodes == 2
        assert update.critics == {"planner": CriticUpdate(**critic)}
        assert update.actors == {"planner": ActorUpdate(**actor)}
        # written back in today's layout: the learner's report under "update", and the fields curves gained
        # since (per-episode scores, the publish gate) at their defaults
        assert point.to_json() == {**layouts[1], "episode_scores": {}, "gate": None, "rolled_back": False,
                                   "served": {}, "eval_scores": {}, "eval_before": {}}
    nothing = IterationPoint.from_json({**base, "update": {"new_episodes": 0}})
    assert nothing.to_json()["update"] == {"new_episodes": 0}
