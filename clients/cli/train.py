"""``glider train ...``: the trainer's stages: warm-up of the embedded backbone, SFT, ORL, O2O."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from glider.clients.cli._common import console, default_help, given, require, settings, split_list
from glider.clients.cli.data import (
    annotator_for,
    medium_root,
    per_task_or_recipe,
    perturbed_root,
    trajectories,
)
from glider.trainer.o2o import O2OConfig
from glider.trainer.orl import ORLConfig
from glider.trainer.rl import CriticConfig, RLMethod
from glider.trainer.sft import SFTConfig
from glider.trainer.warmup import WARMUP
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Training stages (the trainer sidecar).")

# Every default below is read from a config dataclass (None = "the config's default"), so it is
# written once, where the trainer defines it.
SFT, ORL, CRITIC, O2O = SFTConfig(), ORLConfig(), CriticConfig(), O2OConfig()



def _mode(shared: bool, flat: bool) -> str:
    """The policy mode the --shared / --flat flags choose (neither: separate adapters)."""
    if shared and flat:
        raise typer.BadParameter("--shared and --flat exclude each other")
    return "shared" if shared else "flat" if flat else "separate"


def profile_target(s, profile: str | None, mode: str | None = None):
    """(registry root, profile) a training publishes into: the registry itself, or a stored agent profile's
    registry, whose mode must be the one trained."""
    from glider.server.profiles import (
        DEFAULT,
        InvalidProfile,
        ProfileNotFound,
        ProfileSpec,
        ProfileStore,
    )

    store = ProfileStore(s.adapters_dir(), ProfileSpec(mode=getattr(s.mode, "value", s.mode)))
    try:
        target = store.get(profile or DEFAULT)
    except (ProfileNotFound, InvalidProfile) as exc:
        raise typer.BadParameter(f"{exc} (create it with PUT /admin/profiles/{profile})",
                                 param_hint="--profile") from None
    if profile and not target.adapters:
        raise typer.BadParameter(f"profile {profile!r} is the base model prompted: it has no adapters to train",
                                 param_hint="--profile")
    if profile and mode is not None and target.mode.value != mode:
        raise typer.BadParameter(f"profile {profile!r} serves the {target.mode.value} mode, not {mode}",
                                 param_hint="--profile")
    return store.registry(target.name).root, target


def _opt(text: str, default) -> typer.models.OptionInfo:
    return typer.Option(help=default_help(text, default))


@app.command("warmup")
def train_warmup(
    model: Annotated[Path | None, typer.Option(help="The embedded backbone (GLIDER_MODEL).")] = None,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    tasks: str = "",
    per_task: int | None = None,
    epochs: Annotated[float | None, _opt("", WARMUP.epochs)] = None,
    lr: Annotated[float | None, _opt("", WARMUP.lr)] = None,
    batch_tokens: Annotated[int | None, _opt("Padded tokens per micro-batch.", WARMUP.batch_tokens)] = None,
    grad_accum: Annotated[int | None, _opt("", WARMUP.grad_accum)] = None,
    max_minutes: Annotated[float | None, _opt("Time box.", WARMUP.max_minutes)] = None,
    max_steps: Annotated[int | None, _opt("Optimizer steps (overrides epochs).", WARMUP.max_steps)] = None,
    seed: Annotated[int | None, _opt("", WARMUP.seed)] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoints and logs (<home>/runs/warmup).")] = None,
):
    """Pre-train the embedded tiny backbone on environment transcripts (real backbones skip this)."""
    require("train", command="train warmup")
    from glider.trainer.warmup import warmup_backbone

    s = settings(model=model)
    trajs = trajectories(data, tasks, per_task)
    cfg = given(WARMUP, epochs=epochs, lr=lr, batch_tokens=batch_tokens, grad_accum=grad_accum,
                max_minutes=max_minutes, max_steps=max_steps, seed=seed)
    report = warmup_backbone(s.model_dir(), trajs, cfg, out or s.home / "runs" / "warmup")
    if report is not None:
        console.print_json(json.dumps(report.to_dict(), default=str))


@app.command("sft")
def train_sft(
    shared: Annotated[bool, typer.Option("--shared", help="One adapter for both roles (the paper's mode).")]
    = False,
    flat: Annotated[bool, typer.Option("--flat", help="The no-hierarchy baseline.")] = False,
    model: Annotated[Path | None, typer.Option(help="Backbone (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry to publish to (GLIDER_ADAPTERS).")] = None,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    logs: Annotated[Path | None, typer.Option(help="Also train on server episode logs from here.")] = None,
    tasks: str = "",
    per_task: int | None = None,
    recipe: Annotated[str | None, typer.Option(help="glider: the paper's per-family counts of the collected "
                                                    "data (instead of --per-task).")] = None,
    epochs: Annotated[float | None, _opt("At most this many epochs (early stopping usually ends first).",
                                         SFT.train.epochs)] = None,
    lr: Annotated[float | None, _opt("", SFT.train.lr)] = None,
    rank: Annotated[int | None, _opt("LoRA rank (alpha = 2 × rank).", SFT.lora.r)] = None,
    batch_tokens: Annotated[int | None, _opt("Padded tokens per micro-batch.", SFT.train.batch_tokens)] = None,
    grad_accum: Annotated[int | None, _opt("", SFT.train.grad_accum)] = None,
    max_minutes: Annotated[float | None, _opt("Time box per adapter.", SFT.train.max_minutes)] = None,
    max_steps: Annotated[int | None, _opt("Optimizer steps (overrides epochs).", SFT.train.max_steps)] = None,
    patience: Annotated[int | None, _opt("Stop after this many held-out measurements without a new best "
                                         "(0: train the whole budget); ends on the best weights.",
                                         SFT.train.patience)] = None,
    eval_every: Annotated[int | None, _opt("Measure the held-out loss every N optimizer steps.",
                                           SFT.train.eval_every)] = None,
    val_fraction: Annotated[float | None, _opt("Share of train variations held out for early stopping.",
                                               SFT.val_fraction)] = None,
    seed: Annotated[int | None, _opt("Training and the held-out split.", SFT.train.seed)] = None,
    annotator: str = "template",
    llm_url: str | None = None,
    llm_model: str | None = None,
    publish: Annotated[bool, typer.Option(help="Publish to the registry when done.")] = True,
    profile: Annotated[str | None, typer.Option(
        help="Publish into this agent profile of the registry (default: the server's default profile).")] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoints, logs, adapters (<home>/runs/sft-<mode>).")]
    = None,
):
    """Behaviour cloning of the planner and executor (or the shared / flat adapter) with LoRA."""
    require("train", command="train sft")
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.data.hierarchy import SegmentationConfig
    from glider.trainer.sft import run_sft

    mode = _mode(shared, flat)
    s = settings(model=model, adapters=adapters)
    registry, target = profile_target(s, profile, mode)
    trajs = trajectories(data, tasks, per_task_or_recipe(per_task, recipe), logs, profile=target.name)
    defaults = SFTConfig()
    cfg = given(defaults, mode=mode, val_fraction=val_fraction, split_seed=seed,
                segmentation=SegmentationConfig(max_len=s.c_max),
                lora=given(defaults.lora, r=rank, alpha=2 * rank if rank else None),
                train=given(defaults.train, epochs=epochs, lr=lr, batch_tokens=batch_tokens, grad_accum=grad_accum,
                            max_minutes=max_minutes, max_steps=max_steps, eval_every=eval_every, seed=seed))
    if patience is not None:
        cfg.train.patience = patience or None
    hierarchy = HierarchyConfig.from_settings(s.model_copy(update={"mode": mode}))
    metrics = run_sft(s.model_dir(), trajs, out or s.home / "runs" / f"sft-{mode}", cfg, hierarchy=hierarchy,
                      registry=registry if publish else None,
                      annotator=annotator_for(annotator, llm_url, llm_model))
    table = Table("adapter", "tokens", "padding", "tokens/s", "steps (epochs)", "best step", "loss first→last",
                  "val loss before→after", "minutes", "published")
    for name, m in metrics.adapters.items():
        t = m.training
        table.add_row(name, str(m.tokens), f"{100 * t.padding_share:.1f}%", f"{t.tokens_per_s:.0f}",
                      f"{t.steps} ({t.epochs_done:.1f})", str(t.best_step),
                      f"{t.first_loss:.3f}→{t.train_loss:.3f}",
                      f"{m.val_loss_before:.3f}→{m.val_loss_after:.3f}", f"{t.seconds / 60:.1f}",
                      m.published or "-")
    console.print(table)


@app.command("orl")
def train_orl(
    shared: Annotated[bool, typer.Option("--shared", help="One adapter for both roles.")] = False,
    flat: Annotated[bool, typer.Option("--flat", help="The no-hierarchy baseline.")] = False,
    init: Annotated[str, typer.Option(help="sft: start from the registry's SFT adapters | scratch: a fresh "
                                           "LoRA (the ORL-only ablation).")] = "sft",
    model: Annotated[Path | None, typer.Option(help="Backbone (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="Registry (GLIDER_ADAPTERS).")] = None,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    perturbed: Annotated[Path | None, typer.Option(help="Perturbed replays (`glider data collect --perturb`; "
                                                        "default <home>/data/perturbed if it exists).")] = None,
    medium: Annotated[Path | None, typer.Option(help="Medium-policy episodes (`glider data medium`; default "
                                                     "<home>/data/medium if it holds medium.jsonl).")] = None,
    logs: Annotated[Path | None, typer.Option(help="Server episode logs (the SFT agent's own episodes).")] = None,
    tasks: str = "",
    per_task: int | None = None,
    expectile: Annotated[float | None, _opt("τ of the V loss.", ORL.critic.expectile)] = None,
    lam: Annotated[float | None, _opt("λ of exp(A/λ).", ORL.critic.lam)] = None,
    max_weight: Annotated[float | None, _opt("Clip of exp(A/λ).", ORL.critic.max_weight)] = None,
    gamma: Annotated[float | None, _opt("", ORL.critic.gamma)] = None,
    polyak: Annotated[float | None, _opt("", ORL.critic.polyak)] = None,
    critic_steps: Annotated[int | None, _opt("", ORL.critic.steps)] = None,
    critic_lr: Annotated[float | None, _opt("", ORL.critic.lr)] = None,
    advantage: Annotated[str | None, _opt("td: the paper's TD-trained Q against the expectile V; mc: the "
                                          "decision's observed return against V.", ORL.critic.advantage)] = None,
    step_cost: Annotated[float | None, _opt("κ: the executor's intrinsic cost per step.",
                                            ORL.executor_reward.step_cost)] = None,
    heldout_fraction: Annotated[float | None, _opt("Variations kept out to check the critic's ranking on.",
                                                   ORL.heldout_fraction)] = None,
    epochs: Annotated[float | None, _opt("Actor epochs; a critic round before each.", ORL.actor.epochs)] = None,
    critic_every: Annotated[int | None, _opt("A critic round before every N-th actor epoch (N ≥ --epochs: one "
                                             "critic, on the starting policy's features).", ORL.critic_every)]
    = None,
    lr: Annotated[float | None, _opt("Actor learning rate.", ORL.actor.lr)] = None,
    batch_tokens: Annotated[int | None, _opt("Padded tokens per micro-batch.", ORL.actor.batch_tokens)] = None,
    grad_accum: Annotated[int | None, _opt("", ORL.actor.grad_accum)] = None,
    max_minutes: Annotated[float | None, _opt("Time box of the actor.", ORL.actor.max_minutes)] = None,
    max_steps: Annotated[int | None, _opt("Actor optimizer steps (overrides epochs).", ORL.actor.max_steps)] = None,
    seed: Annotated[int | None, _opt("", CRITIC.seed)] = None,
    publish: Annotated[bool, typer.Option(help="Publish to the registry when done.")] = True,
    profile: Annotated[str | None, typer.Option(
        help="Start from and publish into this agent profile's adapters (default: the server's default "
             "profile).")] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoints, critics, adapters (<home>/runs/orl-<mode>).")]
    = None,
):
    """Offline RL: a critic per level (by default V, the expectile of the observed returns, against them;
    --advantage td: the paper's TD-trained Q/V) and an advantage-weighted actor, on expert + suboptimal data."""
    require("train", command="train orl")
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.data.hierarchy import SegmentationConfig
    from glider.trainer.orl import run_orl

    if init not in ("sft", "scratch"):
        raise typer.BadParameter("sft | scratch", param_hint="--init")
    if advantage is not None and advantage not in ("td", "mc"):
        raise typer.BadParameter("td | mc", param_hint="--advantage")
    if critic_every is not None and critic_every < 1:
        raise typer.BadParameter("at least 1 epoch", param_hint="--critic-every")
    mode = _mode(shared, flat)
    s = settings(model=model, adapters=adapters)
    registry, target = profile_target(s, profile, mode)  # before the training: a bad --profile fails at once
    if perturbed is None and perturbed_root(None).is_dir():
        perturbed = perturbed_root(None)
    if medium is None and (medium_root(None) / "medium.jsonl").is_file():
        medium = medium_root(None)
    trajs = trajectories(data, tasks, per_task, logs, perturbed=perturbed, medium=medium, profile=target.name)
    defaults = ORLConfig()
    cfg = given(defaults, mode=mode, init=init, segmentation=SegmentationConfig(max_len=s.c_max),
                heldout_fraction=heldout_fraction, critic_every=critic_every,
                executor_reward=given(defaults.executor_reward, step_cost=step_cost),
                critic=given(defaults.critic, expectile=expectile, lam=lam, max_weight=max_weight, gamma=gamma,
                             advantage=advantage,
                             polyak=polyak, steps=critic_steps, lr=critic_lr, seed=seed),
                actor=given(defaults.actor, epochs=epochs, lr=lr, batch_tokens=batch_tokens, grad_accum=grad_accum,
                            max_minutes=max_minutes, max_steps=max_steps, seed=seed))
    hierarchy = HierarchyConfig.from_settings(s.model_copy(update={"mode": mode}))
    metrics = run_orl(s.model_dir(), trajs, out or s.home / "runs" / f"orl-{mode}", cfg, hierarchy=hierarchy,
                      registry=registry, publish=publish)
    console.print(f"trajectories by source: {metrics.trajectories}")
    console.print(f"held out for the critic's check: {metrics.heldout_trajectories} trajectories")
    table = Table("adapter", "role", "round", "decisions", "critic loss", "advantage by source", "ESS",
                  "held-out ρ(A, G)")
    for name, m in metrics.adapters.items():
        for role, r in m.roles.items():
            for k in r.rounds:
                rho = k.heldout.rank_correlation if k.heldout else None
                table.add_row(name, role, str(k.epoch), str(k.weights.decisions),
                              " ".join(f"{n}={v:.4f}" for n, v in k.critic_loss.items()),
                              " ".join(f"{g} {a.advantage_mean:+.3f}±{a.advantage_std:.3f}"
                                       for g, a in k.by_source.items()),
                              f"{k.weights.effective_sample_size:.2f}", "-" if rho is None else f"{rho:.2f}")
    console.print(table)
    for name, m in metrics.adapters.items():
        console.print(f"{name}: actor loss {m.training.first_loss:.3f}→{m.training.train_loss:.3f} in "
                      f"{m.training.steps} steps ({m.training.epochs_done:.1f} epochs), published {m.published or '-'}")


@app.command("o2o")
def train_o2o(
    server: Annotated[str, typer.Option(help="The serving server's REST address.")] = "http://127.0.0.1:8000",
    method: Annotated[RLMethod | None, _opt("", O2O.method)] = None,
    tasks: Annotated[str | None, _opt("Online (held-out) task families, comma-separated.", ",".join(O2O.tasks))]
    = None,
    split: Annotated[str | None, _opt("Whose variations are played online.", O2O.split)] = None,
    iterations: Annotated[int | None, _opt("0 runs until stopped.", O2O.iterations)] = None,
    episodes: Annotated[int | None, _opt("Episodes played per iteration.", O2O.episodes_per_iteration)] = None,
    max_steps: Annotated[int | None, _opt("", O2O.max_steps)] = None,
    fifo: Annotated[int | None, _opt("Online episodes kept for the updates.", O2O.fifo_episodes)] = None,
    updates_per_episode: Annotated[int | None, _opt("", O2O.updates_per_episode)] = None,
    critic_steps: Annotated[int | None, _opt("Critic updates per iteration.", O2O.critic_steps)] = None,
    adapt_executor: Annotated[bool | None, typer.Option(
        "--adapt-executor/--no-adapt-executor",
        help=default_help("Also adapt the executor (the paper adapts the planner).", O2O.adapt_executor))] = None,
    actor_lr: Annotated[float | None, _opt("", O2O.actor_lr)] = None,
    temperature: Annotated[float | None, _opt("Online episodes are sampled at this temperature, each with its "
                                              "own recorded seed (0: greedy).", O2O.temperature)] = None,
    offline_share: Annotated[float | None, _opt("Share of actor batches from the offline data.",
                                                O2O.offline_share)] = None,
    gate_episodes: Annotated[int | None, _opt("Publish gate: greedy episodes per online family after each "
                                              "update (0: no gate).", O2O.gate_episodes)] = None,
    gate_margin: Annotated[float | None, _opt("Publish gate: roll an update back when its score (0..1) falls "
                                              "this much below the last accepted one.", O2O.gate_margin)] = None,
    eval_episodes: Annotated[int | None, _opt("Greedy episodes per online family on --eval-split after each "
                                              "update: the curve of what is published (0: none).",
                                              O2O.eval_episodes)] = None,
    eval_split: Annotated[str | None, _opt("Whose variations the greedy evaluation plays.", O2O.eval_split)] = None,
    offline: Annotated[bool, typer.Option(help="Interleave the expert data (--data) with the online episodes.")]
    = True,
    data: Annotated[Path | None, typer.Option(help="Expert trajectory cache.")] = None,
    offline_tasks: Annotated[str, typer.Option(help="Offline task families (default: all but --tasks).")] = "",
    per_task: Annotated[int, typer.Option(help="Offline trajectories per family.")] = 3,
    parallel: Annotated[int | None, _opt("Environment processes at once.", O2O.parallel)] = None,
    model: Annotated[Path | None, typer.Option(help="Backbone (GLIDER_MODEL).")] = None,
    adapters: Annotated[Path | None, typer.Option(help="The registry the server watches (GLIDER_ADAPTERS).")]
    = None,
    records: Annotated[Path | None, typer.Option(help="The server's episode logs (GLIDER_RECORD_DIR).")] = None,
    out: Annotated[Path | None, typer.Option(help="Adapters per iteration and curve.json.")] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server's /readyz.")] = 1800.0,
    leader_lock: Annotated[bool, typer.Option(
        help="Train only while holding the trainer lock in GLIDER_REDIS_URL (one trainer per deployment; "
             "the others wait to take over).")] = False,
    seed: Annotated[int | None, _opt("", O2O.seed)] = None,
    profile: Annotated[str | None, typer.Option(
        help="The agent profile to adapt: its episodes are played, and its adapters published (default: the "
             "server's default profile).")] = None,
):
    """Offline-to-online: play through the server, learn from what it recorded, publish, hot-swap, repeat.

    --iterations 0 runs until stopped (the trainer sidecar)."""
    require("train", "envs", command="train o2o")
    from glider.clients.envs.scienceworld import TASK_FAMILIES
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.o2o import OnlineLearner
    from glider.trainer.online import area_under_curve, run_o2o

    online = split_list(tasks) if tasks is not None else O2OConfig().tasks
    unknown = [t for t in online if t not in TASK_FAMILIES]
    if not online or unknown:
        raise typer.BadParameter(f"unknown task families {unknown}" if unknown else "at least one",
                                 param_hint="--tasks")
    if iterations is not None and iterations < 0:
        raise typer.BadParameter("0 (until stopped) or more", param_hint="--iterations")
    if temperature is not None and temperature < 0:
        raise typer.BadParameter("0 (greedy) or more", param_hint="--temperature")
    if offline_share is not None and not 0.0 <= offline_share < 1.0:
        raise typer.BadParameter("a share in [0, 1)", param_hint="--offline-share")
    if gate_episodes is not None and gate_episodes < 0:
        raise typer.BadParameter("0 (no gate) or more", param_hint="--gate-episodes")
    if eval_episodes is not None and eval_episodes < 0:
        raise typer.BadParameter("0 (no evaluation) or more", param_hint="--eval-episodes")
    s = settings(model=model, adapters=adapters)
    registry, target = profile_target(s, profile)
    mode = target.mode.value
    offline_trajs = []
    if offline:
        keep = split_list(offline_tasks) or [t for t in TASK_FAMILIES if t not in online]
        offline_trajs = trajectories(data, ",".join(keep), per_task)
    defaults = O2OConfig()
    cfg = given(defaults, method=method, tasks=online, split=split, iterations=iterations,
                episodes_per_iteration=episodes, max_steps=max_steps, fifo_episodes=fifo,
                updates_per_episode=updates_per_episode, critic_steps=critic_steps, adapt_executor=adapt_executor,
                actor_lr=actor_lr, critic=given(defaults.critic, seed=seed), parallel=parallel, seed=seed,
                temperature=temperature, offline_share=offline_share, gate_episodes=gate_episodes,
                gate_margin=gate_margin, eval_episodes=eval_episodes, eval_split=eval_split, profile=profile)
    table = Table("iteration", "episodes", "score", "published", "gate", "greedy eval", "serving", "play s",
                  "train s", "swap s")

    def show(point) -> None:
        verdict = " (rolled back)" if point.rolled_back else ""
        console.print(f"iteration {point.iteration}: score {100 * point.score:.1f} -> {point.versions}{verdict}")
        table.add_row(str(point.iteration), str(point.episodes), f"{100 * point.score:.1f}",
                      " ".join(f"{k}@{v}" for k, v in point.versions.items()),
                      "-" if point.gate is None else f"{100 * point.gate:.1f}{verdict}",
                      "-" if point.eval_score is None else f"{100 * point.eval_score:.1f}",
                      " ".join(f"{k}@{v}" for k, v in point.served.items()), f"{point.play_s:.0f}",
                      f"{point.train_s:.0f}", f"{point.swap_s:.1f}")

    from glider.clients.sdk import GliderClient
    from glider.trainer.leader import LeaderLock, LeadershipLost

    lock = LeaderLock(s.redis_url.get_secret_value(), prefix=s.redis_prefix) if leader_lock else None
    if lock is not None:  # before loading the model: a waiting replica holds no memory
        lock.acquire()
    try:
        learner = OnlineLearner(s.model_dir(), registry, cfg, mode=mode, offline=offline_trajs,
                                hierarchy=target.hierarchy(HierarchyConfig.from_settings(s)), out_dir=out)
        with GliderClient(server) as client:  # a sidecar starts beside a server that is still loading
            client.wait_ready(timeout=ready_timeout)
        curve = run_o2o(server, records or s.episodes_dir(), learner, games_dir=s.home / "games",
                        on_iteration=show, before_publish=lock.check if lock else None)
    except LeadershipLost as exc:
        console.print(f"[red]stopped before publishing: {exc}[/red]")
        raise typer.Exit(3) from None
    finally:
        if lock is not None:
            lock.close()
    console.print(table)
    console.print(f"area under the curve ({cfg.method}): {area_under_curve(curve):.2f}")
