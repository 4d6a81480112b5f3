"""Does the critic rank the data?  ORL's critic settings compared on one role's decisions, before any actor step.

The decisions are those ``bench/quality.py --orl`` trains on (the recipe's expert trajectories, perturbed
replays, the medium policy's episodes), split as ORL splits them (10 % of the variations held out); the
features are the role's SFT adapter's hidden states, computed once and cached.  Each critic setting
(``CriticConfig`` fields as JSON) is fitted on them and reported: its losses, the advantage's mean and
spread, the weights' effective sample size, Spearman's ρ of A with the observed return G on the
training and the held-out decisions (with the Monte-Carlo advantage A = G − V(s) that one is large by
construction: its held-out check is ρ(V(s), G), whether V generalises), and the advantage and mean
weight per data source.

    .venv/bin/python bench/critic_probe.py --role planner '{}' '{"advantage": "mc", "expectile": 0.5}'
    .venv/bin/python bench/critic_probe.py --role executor --home .glider/quality-demo '{"polyak": 0.05}'

Needs a finished ``bench/quality.py --recipe demo --orl`` data stage (its SFT adapters, perturbed and
medium data) under ``--home``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from common import ROOT, settings


def role_data(home: Path, role: str, recipe_name: str, perturb: float):
    """(train sequences, train decisions, held-out sequences, held-out decisions) of ``role``, as ORL builds them."""
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.data.collect import load_collected
    from glider.trainer.data.hierarchy import IntrinsicReward, SegmentationConfig, split_by_group
    from glider.trainer.medium import load_medium
    from glider.trainer.pipeline import Recipe
    from glider.trainer.sequences import SequenceBuilder, role_decisions
    from glider.trainer.sft import episodes_for
    from transformers import AutoTokenizer

    recipe = Recipe.named(recipe_name)
    s = settings(home=home, mode="flat" if role == "flat" else "separate")
    trajs = load_collected(home / "data" / "expert", "scienceworld", "train", recipe.tasks, recipe.per_task)
    perturbed = home / "data" / f"perturbed-{perturb:g}"
    if perturbed.is_dir():
        trajs += load_collected(perturbed, "scienceworld", "train", recipe.tasks, recipe.per_task)
    if (home / "medium" / "medium.jsonl").is_file():
        trajs += load_medium(home / "medium" / "medium.jsonl")
    train, held = split_by_group(trajs, 0.1, 0)
    seg = SegmentationConfig(max_len=s.c_max)
    builder = SequenceBuilder(AutoTokenizer.from_pretrained(s.model_dir()), 2048)
    hierarchy = HierarchyConfig.from_settings(s)
    return (*role_decisions(episodes_for(train, None, seg), role, builder, hierarchy, IntrinsicReward()),
            *role_decisions(episodes_for(held, None, seg), role, builder, hierarchy, IntrinsicReward()))


def features(home: Path, role: str, sequences, held_sequences):
    """The SFT adapter's (state, utterance) features of both sets, cached beside the recipe's runs."""
    import torch
    from glider.server.adapters.registry import AdapterRegistry
    from glider.trainer.critic import decision_features
    from glider.trainer.orl import load_policy
    from transformers import AutoTokenizer

    s = settings(home=home, mode="flat" if role == "flat" else "separate")
    adapter = AdapterRegistry(s.adapters_dir()).get(role)
    cache = home / "runs" / "critic-probe" / f"{role}-{adapter.version}.pt"
    if cache.is_file():
        return torch.load(cache)
    model = load_policy(s.model_dir(), adapter=adapter.path, lora=None)
    pad = AutoTokenizer.from_pretrained(s.model_dir()).pad_token_id
    t0 = time.monotonic()
    out = {"train": decision_features(model, sequences, pad, progress=True),
           "held": decision_features(model, held_sequences, pad, progress=True)}
    print(f"features of {role}@{adapter.version}: {time.monotonic() - t0:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", default=["{}"], help="CriticConfig fields as JSON, one setting each")
    p.add_argument("--role", default="planner", choices=["planner", "executor", "flat"])
    p.add_argument("--home", type=Path, default=ROOT / ".glider" / "quality-demo")
    p.add_argument("--recipe", default="demo")
    p.add_argument("--perturb", type=float, default=0.2)
    args = p.parse_args()

    import torch
    from glider.trainer.critic import Critic, Transitions, rank_correlation
    from glider.trainer.orl import by_source, weight_stats
    from glider.trainer.rl import CriticConfig

    seqs, decisions, held_seqs, held_decisions = role_data(args.home, args.role, args.recipe, args.perturb)
    feats = features(args.home, args.role, seqs, held_seqs)
    print(f"# {args.role}: {len(decisions)} decisions ({len(held_decisions)} held out)\n")
    print("| critic | losses | A mean ± sd | ESS | ρ(A, G) train / held-out | held-out ρ(V, G) | "
          "A by source (mean weight) |")
    print("|---|---|---:|---:|---:|---:|---|")
    for text in args.configs:
        cfg = CriticConfig(**json.loads(text))
        data = Transitions.build(*feats["train"], decisions, cfg.gamma, cfg.reward_scale)
        held = Transitions.build(*feats["held"], held_decisions, cfg.gamma, cfg.reward_scale)
        critic = Critic(data.state.size(-1), cfg)
        losses = critic.fit(data)
        adv = critic.advantages(data)
        weights = critic.actor_weights(data, adv)
        stats = weight_stats(adv, weights, cfg)
        rho = [rank_correlation(adv, data.returns), rank_correlation(critic.advantages(held), held.returns)]
        with torch.no_grad():
            rho_v = rank_correlation(critic.v(held.state).squeeze(-1), held.returns)
        groups = " ".join(f"{k} {g.advantage_mean:+.3f} ({g.weight_mean:.2f})"
                          for k, g in by_source(decisions, adv, weights).items())
        changed = {k: v for k, v in dataclasses.asdict(cfg).items() if v != getattr(CriticConfig(), k)}
        print(f"| {json.dumps(changed, default=str) if changed else 'defaults'} | "
              + " ".join(f"{k} {v:.4f}" for k, v in losses.items())
              + f" | {stats.advantage_mean:+.3f} ± {stats.advantage_std:.3f} | {stats.effective_sample_size:.2f} | "
              + " / ".join("–" if r is None else f"{r:+.2f}" for r in rho)
              + f" | {'–' if rho_v is None else f'{rho_v:+.2f}'} | {groups} |", flush=True)


if __name__ == "__main__":
    main()
