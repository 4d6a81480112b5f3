"""Agent quality on GLIDER's protocol: flat SFT, hierarchical SFT (separate adapters) and hierarchical SFT
(one shared adapter), each trained on one recipe and evaluated on the committed plan, with paired CIs.

    .venv/bin/python bench/quality.py --recipe demo            # the demo recipe (3 train variations / family)
    .venv/bin/python bench/quality.py --recipe full            # the paper's 1,284 trajectories
    .venv/bin/python bench/quality.py --recipe full --warmup-minutes 10 --sft-minutes 20 --modes separate
                                                               # the same data in shorter boxes (full-w10-s20)
    .venv/bin/python bench/quality.py --recipe demo --repeat 2 --guards-off   # + an A/A run and the guards off
    .venv/bin/python bench/quality.py --recipe demo --modes separate --grounded  # + each agent grounded, paired
    .venv/bin/python bench/quality.py --recipe demo --modes separate --splits unseen --entry demo-d \
        --home .glider/quality-smollm2 --model .glider/backbones/SmolLM2-135M-Instruct.Q4_1 --sft-minutes 90
                                    # the same recipe's SFT on a pretrained backbone, paired with demo-d's
    ... --model .glider/backbones/SmolLM2-135M-Instruct.Q4_1 --prompted instruct,react
                                    # + that backbone prompted without adapters (profiles), paired with its SFT

Every stage is cached or resumable, so a run cut off (a session's end, a kill) carries on where it stopped
when started again with the same arguments: collection and training resume from their caches and
checkpoints, each evaluation from its episodes.jsonl.  It takes hours on 2 cores: run it in the
background under ``nice -n 19`` and run no benchmark beside it.

Writes ``<home>/eval/...`` (one run directory per agent: table, transcripts), and merges its figures
into ``bench/results/quality.json``: per agent and split the protocol, plan file, episodes, mean and 95 %
CI, commit and recipe; per comparison the paired difference B − A with its CI and minimum detectable
difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from common import ROOT, ServerProcess, machine, settings
from glider.clients.evaluate import (
    EvalConfig,
    SplitDifference,
    Summary,
    compare_runs,
    comparison_markdown,
    difference_cell,
    load_results,
    run_episodes,
    table_markdown,
    write_report,
)
from glider.clients.protocols import load_plan, plan_path
from glider.server.adapters.registry import AdapterRegistry
from glider.server.policy.modes import ADAPTER_ROLES
from glider.trainer.medium import load_medium
from glider.trainer.pipeline import Recipe, ensure_trained
from tqdm import tqdm

LABEL = {"flat": "flat SFT", "separate": "hierarchical SFT (separate)", "shared": "hierarchical SFT (shared)",
         "flat+orl": "flat SFT+ORL", "separate+orl": "hierarchical SFT+ORL (separate)",
         "shared+orl": "hierarchical SFT+ORL (shared)", "separate+orl-scratch": "hierarchical ORL (from scratch)",
         "flat+bc": "flat SFT+BC on ORL's data (λ → ∞)",
         "separate+bc": "hierarchical SFT+BC on ORL's data (separate; λ → ∞)",
         "shared+bc": "hierarchical SFT+BC on ORL's data (shared; λ → ∞)",
         "separate+bc-scratch": "hierarchical BC on ORL's data, from scratch (separate; λ → ∞)",
         "prompted-instruct": "prompted, no adapters (instruct)", "prompted-react": "prompted ReAct, no adapters"}
#: the comparisons the issues ask for, as (A, B): B − A is reported
COMPARE = [("flat", "separate"), ("flat", "shared"), ("shared", "separate"),
           ("separate", "separate+orl"), ("flat", "flat+orl"), ("flat", "separate+orl"),
           ("separate", "separate+orl (planner only)"), ("separate", "separate+orl (executor only)"),
           ("separate+orl-scratch", "separate+orl"),
           # the control: the same data and actor schedule with flat weights; ORL − BC is the advantage's share
           ("separate", "separate+bc"), ("separate+bc", "separate+orl"),
           ("flat", "flat+bc"), ("flat+bc", "flat+orl"), ("shared", "shared+bc"), ("shared+bc", "shared+orl"),
           # from a fresh LoRA the data's own mix is the whole prior: where the weights should matter most
           ("separate+bc-scratch", "separate+orl-scratch"),
           # the ratio target: hierarchical SFT+ORL ≥ 1.15 × flat SFT, as B − 1.15·A above 0
           ("flat", "separate+orl", 1.15)]
#: λ of the behaviour-cloning control: |A| ≤ 1 on the 0..1 score scale, so exp(A/λ) is 1 to about 1e-6
BC_LAMBDA = 1e6
#: what an entry says about when and where it was last written, rather than what it holds
STAMP = ("machine", "commit", "date")
GUARDS_OFF = {"GLIDER_GUARD_REPEATED_SUBGOAL": "false", "GLIDER_GUARD_REPEATED_ACTION": "false"}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_home(recipe: Recipe) -> Path:
    """Where a recipe's runs live when ``--home`` is not given."""
    return ROOT / ".glider" / f"quality-{recipe.name}"


def repo_path(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (results files name no machine's paths)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_provenance(out: Path, minutes: float) -> dict:
    """An evaluation's commit and minutes over every session that played part of it: a resumed run
    keeps the commit its first episodes were played at and adds this session's minutes."""
    path = out / "provenance.json"
    known = json.loads(path.read_text()) if path.is_file() else {"commit": commit(), "minutes": 0.0}
    known["minutes"] += minutes
    path.write_text(json.dumps(known) + "\n")
    return known


def home_settings(args, **overrides):
    """The settings of this run's home: its registry, data and runs, on its backbone (``--model``: a
    pretrained one; else the home's embedded backbone)."""
    return settings(home=args.home, **({"model": args.model} if args.model else {}), **overrides)


def on_backbone(args, label: str) -> str:
    """An agent's label with the pretrained backbone it was trained on as its variant, e.g.
    ``separate (SmolLM2-135M-Instruct.Q4_1)``: compared, paired, with the entry's ``separate``."""
    return f"{label} ({args.model.name})" if args.model else label


def train(args, recipe: Recipe, mode: str) -> dict:
    s = home_settings(args, mode=mode)
    t0 = time.monotonic()
    done = ensure_trained(s, dataclasses.replace(recipe, mode=mode, diagnose_segments=args.diagnose), say=lambda msg: print(f"[{recipe.name}/{mode}] {msg}", flush=True))
    # the adapters' figures from their metrics file: SFT may have run in an earlier session of a resumed run
    metrics_file = args.home / "runs" / f"sft-{mode}" / "sft_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {"minutes_this_run": (time.monotonic() - t0) / 60, "stages_run": done.stages(),
            "adapters": {name: {**{k: m.get(k) for k in ("steps", "epochs_done", "best_step", "best_val_loss",
                                                         "val_loss_before", "seconds", "stopped_early",
                                                         "published", "completion_marker", "segment_completion")},
                                "tokens_per_s": tokens_per_s(m)}
                         for name, m in metrics.get("adapters", {}).items()}}


def tokens_per_s(m: dict) -> float | None:
    """An adapter's training tokens/s. A run resumed from a checkpoint that predates the token counts
    (before 2026-12-06) reports 0: then the epochs it did times the epoch's tokens over its seconds."""
    if m.get("tokens_per_s"):
        return m["tokens_per_s"]
    if m.get("seconds") and m.get("tokens") and m.get("epochs_done"):
        return m["epochs_done"] * m["tokens"] / m["seconds"]
    return None


def display(label: str) -> str:
    """An agent's label as the tables show it: ``separate (repeat 2)`` -> hierarchical SFT (separate) (repeat 2)."""
    base, _, rest = label.partition(" (")
    return LABEL.get(base, base) + (f" ({rest}" if rest else "")


def label_slug(label: str) -> str:
    """An agent's label as a file name: ``flat (grounded, focus on protected)`` -> ``flat-grounded-focus-on-protected``."""
    return label.replace(" (", "-").replace(")", "").replace(",", "").replace(" + ", "-").replace(" ", "-")


def evaluate(args, plan, mode: str, label: str, env: dict, registry: Path | None = None,
             grounded: bool = False, profile: str | None = None) -> tuple[Path, Summary]:
    """One agent on the plan: the recipe registry's current adapters of ``mode``, or ``registry``'s (a
    pinned copy holding one agent's versions); ``grounded``: with the environment's admissible commands;
    ``profile``: the server's profile of that name plays the episodes (the default profile is ``mode``'s)."""
    s = home_settings(args, mode=mode)
    # an engine-bound backbone: vLLM's own binding leaves it one of 2 cores (bench/engine_cores.py: 1.37x the
    # env-steps/s at 32 episodes with all of them); the embedded backbone's runs keep the binding they were
    # evaluated with, so their comparisons stay like for like
    cores = {"GLIDER_ENGINE_CPUS": os.environ.get("GLIDER_ENGINE_CPUS", "all")} if args.model else {}
    server = ServerProcess(s, GLIDER_MODE=mode, GLIDER_MODEL=str(s.model_dir()),
                           GLIDER_ADAPTERS=str(registry or s.adapters_dir()), GLIDER_RECORD="false",
                           **cores, **env)
    try:
        server.wait_ready()
        from glider.clients.sdk import GliderClient

        with GliderClient(server.url) as client:
            # ready() reports the default profile's adapters; a prompted profile plays with none
            adapters = {} if profile else dict(client.ready().adapters)
        slug = label_slug(label)
        versions = "_".join(f"{k}-{v}" for k, v in sorted(adapters.items()))
        out = args.home / "eval" / plan.protocol / (f"{slug}-{versions}" if versions else slug)
        t0 = time.monotonic()
        cfg = EvalConfig(plan=plan, server=server.url, transport="rest", parallel=args.parallel, grounded=grounded,
                         profile=profile, timeout=args.step_timeout)
        resumed = sum(1 for r in load_results(out) if r.key in {e.key for e in plan.episodes})
        with tqdm(total=len(plan.episodes), initial=resumed, desc=f"eval {label}", unit="episode") as bar:
            results = run_episodes(cfg, out=out, on_done=lambda r: bar.update(1))
        # a run every episode of which was already played adds no minutes: it only re-read them
        provenance = run_provenance(out, minutes=(time.monotonic() - t0) / 60 if len(results) > resumed else 0.0)
    finally:
        server.close()
    summary = write_report(results, out, plan, label=display(label),
                           meta={"adapters": adapters, "env": env, **provenance})
    print(table_markdown(summary, display(label)), flush=True)
    return out, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="demo", choices=["demo", "full"])
    p.add_argument("--modes", default="flat,separate,shared")
    p.add_argument("--protocol", default="glider")
    p.add_argument("--splits", default=None,
                   help="evaluate these splits of the plan only (e.g. unseen): recorded as its own entry, "
                        "<recipe> (<protocol>-<splits>)")
    p.add_argument("--home", type=Path, default=None, help="default .glider/quality-<recipe>")
    p.add_argument("--data", type=Path, default=ROOT / ".glider" / "data",
                   help="expert data cache shared by every recipe")
    p.add_argument("--parallel", type=int, default=None,
                   help="episodes in flight (default: as many as free memory holds JVMs for, up to 24)")
    p.add_argument("--sft-minutes", type=float, default=60.0,
                   help="full recipe: a mode's SFT time box (its adapters share it by data size)")
    p.add_argument("--warmup-minutes", type=float, default=45.0, help="full recipe: the warm-up's time box")
    p.add_argument("--diagnose", type=int, default=60,
                   help="held-out gold segments replayed to measure the executor's completion")
    p.add_argument("--repeat", type=int, default=1, help="evaluate the separate agent this many times (A/A)")
    p.add_argument("--guards-off", action="store_true", help="also evaluate the separate agent without guards")
    p.add_argument("--grounded", action="store_true",
                   help="also evaluate each mode's agent grounded (the environment's admissible commands sent)")
    p.add_argument("--grounding-protect", default="focus on",
                   help="grounded runs: command prefixes grounding never chooses, comma-separated "
                        "(GLIDER_GROUNDING_PROTECTED; ScienceWorld's 'focus on' ends an episode on a wrong object); "
                        "'' for none")
    p.add_argument("--grounding-method", default="constrained", choices=["constrained", "score"],
                   help="grounded runs: GLIDER_GROUNDING_METHOD (score: the candidate with the highest "
                        "log-likelihood; its runs are labelled apart)")
    p.add_argument("--orl", action="store_true",
                   help="also ORL from each mode's SFT adapters (agent <mode>+orl), evaluated beside them")
    p.add_argument("--orl-scratch", action="store_true",
                   help="also ORL from a fresh LoRA for the separate mode (the 'ORL only' row)")
    p.add_argument("--orl-minutes", type=float, default=20.0,
                   help="ORL: the stage's time box per mode (critic rounds included); 0: none, the actor runs "
                        "--orl-epochs whole (a fixed schedule: a box gives an idle machine more epochs)")
    p.add_argument("--orl-epochs", type=float, default=4.0, help="ORL: actor epochs (a critic round before each)")
    p.add_argument("--orl-critic-every", type=int, default=1,
                   help="ORL: a critic round before every N-th actor epoch (N ≥ --orl-epochs: one critic, fitted "
                        "on the SFT policy's features, for the whole run; its own run directory)")
    p.add_argument("--orl-critic", default="{}",
                   help='ORL: CriticConfig fields as JSON, e.g. \'{"advantage": "mc", "expectile": 0.5}\'')
    p.add_argument("--perturb", type=float, default=0.2,
                   help="ORL data: perturbed replays of the recipe's variations at this ε (0: none)")
    p.add_argument("--medium-minutes", type=float, default=9.0,
                   help="ORL data: the medium policy's SFT box (glider data medium; 0: no medium data)")
    p.add_argument("--orl-roles", action="store_true",
                   help="also the separate mode's ORL one role at a time: ORL's planner with SFT's executor "
                        "(separate+orl (planner only)) and the other way round, from the same two trainings")
    p.add_argument("--orl-bc", action="store_true",
                   help="also each mode's control (agent <mode>+bc): ORL's run from the same SFT on the "
                        "same data with λ → ∞, i.e. flat weights, behaviour cloning on the ORL data mix; "
                        "<mode>+orl − <mode>+bc is what the advantages themselves bought. With --orl-scratch, "
                        "the separate mode's control from scratch (separate+bc-scratch), and the one from SFT only "
                        "with --orl")
    p.add_argument("--model", type=Path, default=None,
                   help="train and evaluate on this pretrained backbone (an HF directory, e.g. from `glider backbone "
                        "import`) instead of the embedded one: no warm-up, SFT boxed by --sft-minutes at --sft-lr, "
                        "agents labelled '<mode> (<directory name>)' and compared, paired, with the --entry's "
                        "agents of the same mode; needs its own --home")
    p.add_argument("--sft-lr", type=float, default=5e-4,
                   help="--model: the LoRA SFT learning rate (the embedded recipes' 2e-3 trains a 4 M model from "
                        "a warm-up)")
    p.add_argument("--prompted", default="",
                   help="--model: also evaluate the backbone prompted without adapters, one profile per prompt style "
                        "(instruct, react: the paper's prompted ReAct), e.g. 'instruct,react'; agents "
                        "prompted-<style> (<directory name>), compared, paired, with the SFT agents on that backbone")
    p.add_argument("--step-timeout", type=float, default=None,
                   help="seconds one step's request may take (default 60; 600 with --model: SmolLM2 on 2 cores "
                        "with 24 episodes in flight took over 60 s a step, and each cut-off step replays its episode)")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--entry", default=None,
                   help="record under this name instead of the recipe's: another training of a recipe (its own "
                        "backbone build, warm-up and SFT) kept beside the first, e.g. demo-b")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    p.add_argument("--page", type=Path, default=ROOT / "docs" / "results.md")
    args = p.parse_args()
    # the trainer's progress (ORL's critic rounds: does the critic rank the data?) as it happens
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("glider.trainer").setLevel(logging.INFO)
    recipe = Recipe.full(args.sft_minutes, args.warmup_minutes) if args.recipe == "full" else Recipe.named(args.recipe)
    if args.prompted and not args.model:
        raise SystemExit("--prompted evaluates a pretrained backbone without adapters: give it with --model")
    unknown_styles = {x.strip() for x in args.prompted.split(",") if x.strip()} - {"instruct", "react"}
    if unknown_styles:
        raise SystemExit(f"--prompted: unknown prompt styles {sorted(unknown_styles)} (instruct | react)")
    if args.step_timeout is None:
        args.step_timeout = 600.0 if args.model else None  # None: the SDK's default
    if args.model:
        pretrained_checks(args)
        args.model = args.model.resolve()  # the servers and the results name it from anywhere
        # a forward of the held-out set costs minutes on a 135 M model: measure it less often, stop sooner
        recipe = dataclasses.replace(recipe, sft=dataclasses.replace(
            recipe.sft, lr=args.sft_lr, max_minutes=args.sft_minutes, eval_every=100, patience=2))
    args.home = (args.home or default_home(recipe)).resolve()  # results name runs relative to the repository
    args.home.mkdir(parents=True, exist_ok=True)
    if not (args.home / "data").exists():  # collected gold paths are shared between recipes
        args.data.mkdir(parents=True, exist_ok=True)
        os.symlink(args.data.resolve(), args.home / "data")
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in ADAPTER_ROLES]
    if unknown:
        raise SystemExit(f"unknown modes {unknown}")
    plan = load_plan(args.protocol)
    if args.splits:
        plan = plan.only([s for s in args.splits.split(",") if s])
    print(f"# quality: recipe {recipe.name} on {machine()}; {plan.describe()}", flush=True)
    training = {on_backbone(args, mode): train(args, recipe, mode) for mode in modes}
    # every agent's adapter versions: SFT is the registry's current after training; ORL publishes beside it
    registry = AdapterRegistry(home_settings(args).adapters_dir())
    agents = {mode: {name: registry.current_version(name) for name in ADAPTER_ROLES[mode]} for mode in modes}
    orl: dict[str, dict] = {}
    orl_data = orl_trajectories(args, recipe) if args.orl or args.orl_scratch or args.orl_bc else None
    # each mode's ORL agents are trained just before they are evaluated, after the mode's SFT agent: a
    # run cut off (a session's end) already has its first mode's paired SFT → ORL reading
    per_mode = {mode: [(f"{mode}+orl" + ("-scratch" if init == "scratch" else ""), init)
                       for init in (["sft"] if args.orl else [])
                       + (["scratch"] if args.orl_scratch and mode == "separate" else [])]
                + ([(f"{mode}+bc", "bc")] if args.orl_bc and (args.orl or not args.orl_scratch) else [])
                + ([("separate+bc-scratch", "bc-scratch")] if args.orl_bc and args.orl_scratch and mode == "separate"
                   else [])
                for mode in modes} if orl_data is not None else {mode: [] for mode in modes}
    wanted = [(on_backbone(args, label), mode, {}, init) for mode in modes
              for label, init in [(mode, None), *per_mode[mode]]]
    if "separate" in modes and args.orl and args.orl_roles:  # which role's ORL moved the score
        wanted += [(f"separate+orl ({role} only)", "separate", {}, None) for role in ("planner", "executor")]
    if "separate" in modes:
        wanted += [(f"separate (repeat {k})", "separate", {}, None) for k in range(2, args.repeat + 1)]
        if args.guards_off:
            wanted.append(("separate (guards off)", "separate", GUARDS_OFF, None))
    if args.grounded:  # their own rows, compared paired with the free agent: never mixed into its score
        protect = [x.strip() for x in args.grounding_protect.split(",") if x.strip()]
        # the prefixes and the method are in the label, so the run directory of one set is never resumed
        # for another (the default method keeps its earlier runs' labels)
        how = "grounded" if args.grounding_method == "constrained" else f"grounded by {args.grounding_method}"
        env = {"GLIDER_GROUNDING_METHOD": args.grounding_method}
        grounded = (f"{how}, {' + '.join(protect)} protected", {**env, "GLIDER_GROUNDING_PROTECTED": json.dumps(protect)}) \
            if protect else (how, env)
        wanted += [(f"{mode} ({grounded[0]})", mode, grounded[1], None) for mode in modes]
    prompted = [x.strip() for x in args.prompted.split(",") if x.strip()]
    wanted += [(on_backbone(args, f"prompted-{style}"), modes[0], {}, None) for style in prompted]
    runs: dict[str, tuple[Path, Summary]] = {}
    pinned = orl_data is not None  # several agents of one mode share the registry: serve each from a copy
    for label, mode, env, init in wanted:  # the figures are written after each run: a cut-off run keeps them
        if init is not None:
            agents[label], orl[label] = train_orl(args, orl_data, mode, init, agents[mode])
        if args.skip_eval:
            continue
        base, _, variant = label.partition(" (")
        versions, pin = agents.get(base, agents[mode]), base  # a prompted profile: the mode's server
        if variant.endswith(" only)"):  # one role's ORL version, the other role's SFT version
            role = variant.split()[0]
            versions, pin = {**agents[mode], role: agents[base][role]}, label_slug(label)
        view = registry.pinned_copy(versions, args.home / "pinned" / pin.replace("+", "-")).root if pinned \
            else None
        profile = prompted_profile(args, base.removeprefix("prompted-")) if base.startswith("prompted-") else None
        runs[label] = evaluate(args, plan, mode, label, env, registry=view, grounded="(grounded" in label,
                               profile=profile)
        record(args, recipe, plan, training, runs, orl)
    if args.skip_eval:
        print(json.dumps({"sft": training, "orl": orl}, indent=2))


def pretrained_checks(args) -> None:
    """--model trains plain SFT agents in a home of their own: what it cannot be combined with, said before
    any training starts."""
    from glider.trainer.backbone import is_backbone, is_embedded

    if not is_backbone(args.model):
        raise SystemExit(f"--model {args.model}: not an HF model directory (config.json and tokenizer.json); "
                         "import one with `glider backbone import`")
    if is_embedded(args.model):
        raise SystemExit(f"--model {args.model} is an embedded backbone: run without --model")
    if args.home is None or (args.home.resolve() / "backbone").exists():
        raise SystemExit("--model needs a --home of its own (its registry holds adapters for that backbone only)")
    combined = [flag for flag, on in (("--orl", args.orl), ("--orl-scratch", args.orl_scratch), ("--orl-bc", args.orl_bc),
                                      ("--grounded", args.grounded), ("--guards-off", args.guards_off),
                                      ("--repeat", args.repeat > 1)) if on]
    if combined:
        raise SystemExit(f"--model trains and evaluates SFT agents only; not with {' '.join(combined)}")


def prompted_profile(args, style: str) -> str:
    """The profile ``prompted-<style>`` in the home's registry: the backbone with no adapters, prompted in
    ``style`` (flat mode, the only one a prompted format has).  Written before its server starts, as the
    admin API would (the same store), so the server loads it like any persisted profile."""
    from glider.server.profiles import GenerationSettings, ProfileSpec, ProfileStore

    name = f"prompted-{style}"
    ProfileStore(home_settings(args).adapters_dir(), ProfileSpec()).put(
        name, ProfileSpec(mode="flat", adapters=False, generation=GenerationSettings(prompt_style=style)))
    return name


def orl_trajectories(args, recipe: Recipe) -> list:
    """ORL's data: the recipe's expert trajectories, perturbed replays of the same variations, and the
    medium policy's recorded episodes (each collected once, cached, resumable)."""
    from glider.trainer.data.collect import collect, load_collected
    from glider.trainer.medium import MediumConfig, collect_medium

    s = home_settings(args)
    expert = args.home / "data" / "expert"
    trajs = load_collected(expert, "scienceworld", "train", recipe.tasks or None, recipe.per_task)
    if args.perturb:
        perturbed = args.home / "data" / f"perturbed-{args.perturb:g}"
        collect(perturbed, per_task=recipe.per_task, workers=recipe.workers, tasks=recipe.tasks or None,
                max_steps=recipe.max_steps, perturb=args.perturb, games_dir=args.home / "games")
        trajs += load_collected(perturbed, "scienceworld", "train", recipe.tasks or None, recipe.per_task)
    if args.medium_minutes:
        base = load_collected(expert, "scienceworld", "train", recipe.tasks or None, recipe.per_task)
        cfg = MediumConfig(sft=dataclasses.replace(recipe.sft, max_minutes=args.medium_minutes),
                           parallel=args.parallel, c_max=s.c_max)
        report = collect_medium(s.model_dir(), base, args.home / "medium", cfg,
                                say=lambda msg: print(f"[{recipe.name}/medium] {msg}", flush=True))
        trajs += load_medium(report.path)
    return trajs


def train_orl(args, trajs: list, mode: str, init: str, sft_versions: dict[str, str]) -> tuple[dict, dict]:
    """ORL of ``mode`` from its SFT versions (or from scratch), published beside them without serving;
    a finished run is reused.  Returns the agent's versions and its training figures."""
    from glider.server.policy.controller import HierarchyConfig
    from glider.trainer.data.hierarchy import SegmentationConfig
    from glider.trainer.orl import ORLConfig, run_orl
    from glider.trainer.rl import CriticConfig
    from glider.trainer.training import TrainConfig

    s = home_settings(args, mode=mode)
    every = args.orl_critic_every
    out = args.home / "runs" / (f"orl-{mode}-{init}" + (f"-critic-every-{every}" if every != 1 else ""))
    metrics_file = out / "orl_metrics.json"
    from_sft = init in ("sft", "bc")
    started = {name: v for name, v in sft_versions.items()} if from_sft else {}
    critic_fields = json.loads(args.orl_critic)
    if init.startswith("bc"):  # the control: the same run from the same start, with weights exp(A/λ) ≈ 1 everywhere
        critic_fields["lam"] = BC_LAMBDA
    critic = json.loads(json.dumps(dataclasses.asdict(CriticConfig(**critic_fields)), default=str))
    actor = TrainConfig(lr=5e-4 if from_sft else 2e-3, epochs=args.orl_epochs, batch_tokens=2048,
                        warmup_steps=5, max_minutes=args.orl_minutes or None)
    schedule = {"epochs": actor.epochs, "max_minutes": actor.max_minutes}
    if metrics_file.is_file():  # a finished run of the same start, critic and schedule is reused
        metrics = json.loads(metrics_file.read_text())
        versions = {name: a.get("published") for name, a in metrics["adapters"].items()}
        same_critic = {**critic, **metrics.get("config", {}).get("critic", {})} == critic
        ran = metrics.get("config", {}).get("actor", {})
        same_schedule = ({k: ran.get(k) for k in schedule} == schedule
                         and metrics.get("config", {}).get("critic_every", 1) == every)
        if all(versions.values()) and metrics.get("started_from", {}) == started and same_critic and same_schedule:
            return versions, orl_figures(metrics, 0.0)
        shutil.rmtree(out)  # another critic's or schedule's run: a new one (its ORL versions are published anew)
    t0 = time.monotonic()
    cfg = ORLConfig(mode=mode, init="sft" if from_sft else init, segmentation=SegmentationConfig(max_len=s.c_max),
                    critic=CriticConfig(**critic_fields), actor=actor, critic_every=every)
    report = run_orl(s.model_dir(), trajs, out, cfg, registry=s.adapters_dir(), make_current=False,
                     start_versions=sft_versions if from_sft else None,
                     hierarchy=HierarchyConfig.from_settings(s))
    return ({name: a.published for name, a in report.adapters.items()},
            orl_figures(report.to_dict(), (time.monotonic() - t0) / 60))


def orl_figures(metrics: dict, minutes: float) -> dict:
    """An ORL run's figures for the results file: its data, and per adapter the actor's training and the
    critic's last round (with its ranking checks)."""
    return {"minutes_this_run": minutes, "trajectories": metrics.get("trajectories"),
            "heldout_trajectories": metrics.get("heldout_trajectories"),
            "adapters": {name: {"steps": a.get("steps"), "epochs_done": a.get("epochs_done"),
                                "seconds": a.get("seconds"), "critic_seconds": a.get("critic_seconds"),
                                "tokens_per_s": a.get("tokens_per_s"), "published": a.get("published"),
                                "rounds": {role: r.get("rounds", []) for role, r in a.get("roles", {}).items()}}
                         for name, a in metrics.get("adapters", {}).items()}}


def record(args, recipe: Recipe, plan, training: dict, runs: dict[str, tuple[Path, Summary]],
           orl: dict | None = None) -> None:
    """Merge this recipe's agents and comparisons into the results file and page; copy each run's
    per-episode scores beside them, so every figure can be recomputed from the repository."""
    name = args.entry or recipe.name
    key = name if plan.protocol == "glider" else f"{name} ({plan.protocol})"
    results = json.loads(args.results.read_text()) if args.results.is_file() else {"recipes": {}}
    earlier = kept_agents(args, plan, results["recipes"].get(key), runs)
    runs = {**{label: run for label, (run, _) in earlier.items()}, **runs}
    pairs = [(a, b, scale) for a, b, *rest in COMPARE for scale in [rest[0] if rest else 1.0]
             if a in runs and b in runs]
    # a backbone prompted without adapters against the agents trained on it (the same variant: its name)
    pairs += [(p, m, 1.0) for p in runs if p.startswith("prompted-")
              for m in runs if not m.startswith("prompted-") and " (" in m and m.partition(" (")[2] == p.partition(" (")[2]]
    # an agent's variants (repeat, guards off, grounded) against the agent itself
    pairs += [(k.split(" (")[0], k, 1.0) for k in runs if " (" in k and k.split(" (")[0] in runs]
    comparisons = []
    for a, b, scale in pairs:
        cmp = compare_runs(runs[a][0], runs[b][0], scale_a=scale)
        print(comparison_markdown(cmp, a, b), flush=True)
        comparisons.append({**cmp.to_dict(), "a": a, "b": b})  # the agents' labels, not their run directories
    # one entry per recipe on the reported plan; a run on another plan (quick, tune) is kept beside it
    episodes_dir = args.results.parent / "runs" / key.replace(" (", "-").replace(")", "")
    episodes_dir.mkdir(parents=True, exist_ok=True)
    def episodes_file(label: str) -> Path:
        return episodes_dir / (label_slug(label) + ".jsonl")

    for label, (out, _) in runs.items():
        if label not in earlier:
            shutil.copyfile(out / "episodes.jsonl", episodes_file(label))
    previous = results["recipes"].get(key) or {}
    # the ORL figures of an agent kept from an earlier run stay with it, and so do those of a finished ORL
    # run this one reused (it trained nothing: its own figures would say "0 minutes")
    before = previous.get("orl", {})
    orl = {**{label: o for label, o in before.items() if label in earlier},
           **{label: before[label] if label in before and not o["minutes_this_run"] else o
              for label, o in (orl or {}).items()}}
    plan_file = str(plan_path(args.protocol).relative_to(ROOT)) if args.protocol in ("glider", "eto") \
        else args.protocol  # --splits: the committed plan file, of which the entry's protocol names the splits
    entry = {
        "machine": machine(), "commit": commit(), "date": time.strftime("%Y-%m-%d"),
        "command": f"bench/quality.py --recipe {args.recipe} --modes {args.modes} --protocol {args.protocol}"
                   + (f" --splits {args.splits}" if args.splits else "")
                   + (f" --entry {shlex.quote(args.entry)}" if args.entry else "")
                   # the home holds the trained agents the entry's rows read: a rerun must name it
                   + (f" --home {shlex.quote(repo_path(args.home))}"
                      if args.home != default_home(recipe).resolve() else "")
                   + (f" --model {shlex.quote(repo_path(args.model))}"
                      f" --sft-minutes {args.sft_minutes:g} --sft-lr {args.sft_lr:g}" if args.model else "")
                   + (f" --prompted {args.prompted}" if args.prompted else "")
                   + (f" --warmup-minutes {args.warmup_minutes:g} --sft-minutes {args.sft_minutes:g}"
                      if recipe.name not in ("demo", "full") else "")
                   + (f" --repeat {args.repeat}" if args.repeat > 1 else "") + (" --guards-off" if args.guards_off else "")
                   + (f" --grounded --grounding-protect {shlex.quote(args.grounding_protect)}"
                      f" --grounding-method {args.grounding_method}" if args.grounded else "")
                   + (" --orl" if args.orl else "") + (" --orl-scratch" if args.orl_scratch else "")
                   + (" --orl-bc" if args.orl_bc else "")
                   + (" --orl-roles" if args.orl_roles else "")
                   + (f" --orl-minutes {args.orl_minutes:g} --orl-epochs {args.orl_epochs:g} --perturb {args.perturb:g}"
                      f" --orl-critic {shlex.quote(args.orl_critic)}"
                      + (f" --orl-critic-every {args.orl_critic_every}" if args.orl_critic_every != 1 else "")
                      + f" --medium-minutes {args.medium_minutes:g}" if args.orl or args.orl_scratch or args.orl_bc else ""),
        "recipe": {"name": recipe.name, "per_task": recipe.per_task, "warmup": vars(recipe.warmup),
                   "sft": vars(recipe.sft)},
        # a mode trained in an earlier run keeps its figures: its agent is kept, or this run only
        # resumed it from the cache (no SFT stage ran) and its own figures would say "0 minutes"
        "training": {**{m: t for m, t in previous.get("training", {}).items() if m in earlier or m in training},
                     **{m: t for m, t in training.items()
                        if "sft" in t["stages_run"] or m not in previous.get("training", {})}},
        **({"orl": orl} if orl else {}),
        "agents": {label: earlier[label][1] if label in earlier else
                   {"protocol": plan.protocol, "plan_file": plan_file, "recipe": recipe.name,
                    "commit": summary.meta.get("commit"), "run": repo_path(out),
                    "episodes_file": repo_path(episodes_file(label)),
                    "minutes": summary.meta.get("minutes"),
                    "splits": {s: {k: getattr(o, k) for k in ("episodes", "mean", "low", "high", "se")}
                               for s, o in summary.overall.items()}}
                   for label, (out, summary) in runs.items()},
        "comparisons": comparisons,
    }
    # a resume that played no new episode leaves the entry as its last evaluation stamped it: compared with
    # the entry as this run found it (a resume's first records hold only part of its agents) and as it is now
    started = vars(args).setdefault("entry_at_start", previous)
    for before in (started, previous):
        if before and same_figures(canonical(json.loads(json.dumps(entry, default=str))),
                                   canonical({**before, **{k: entry[k] for k in STAMP}})):
            entry.update({k: before[k] for k in STAMP if k in before})
            break
    results["recipes"][key] = entry
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, default=str) + "\n")
    update_page(args.page, render(results))
    print(f"results merged into {args.results} and {args.page}", flush=True)


def same_figures(a, b) -> bool:
    """Whether two results (parsed JSON) hold the same figures: floats equal to rounding, since a mean
    recomputed over the same episodes in another order may differ in its last digit."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9,
                                                                                              abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_figures(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_figures, a, b))
    return a == b


def canonical(entry: dict) -> dict:
    """An entry with its comparisons in one order: which agents a run re-read first decides their order."""
    return {**entry, "comparisons": sorted(entry.get("comparisons", []), key=lambda c: (str(c.get("a")), str(c.get("b"))))}


def kept_agents(args, plan, entry: dict | None, runs: dict) -> dict[str, tuple[tuple[Path, None], dict]]:
    """The agents an earlier run of this recipe evaluated on the same plan and this run did not: each
    restored from its committed episode file into a run directory, so that it is compared, paired, with
    this run's agents.  Its entry keeps the command and commit that produced it (another training of
    the same recipe: the comparison includes training variance)."""
    kept = {}
    for label, agent in ((entry or {}).get("agents") or {}).items():
        episodes = ROOT / agent.get("episodes_file", "")
        if label in runs or not episodes.is_file() or agent.get("protocol") != plan.protocol:
            continue
        out = args.home / "eval" / plan.protocol / "earlier" / label.replace(" ", "-")
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(plan.to_json())
        shutil.copyfile(episodes, out / "episodes.jsonl")
        kept[label] = ((out, None), {**agent, "command": agent.get("command", entry.get("command"))})
    return kept


def _ci(o: dict) -> str:
    return f"{o['mean']:.2f} [{o['low']:.2f}, {o['high']:.2f}]"


def render(results: dict) -> str:
    """The results page's generated part: per recipe the agents with CIs, the paired comparisons, training."""
    out = []
    for name, r in results["recipes"].items():
        out += [f"### Recipe `{name}`", "",
                f"`{r['command']}` — {r['date']}, commit {r['commit']}, {r['machine']}.", "",
                "| agent | seen (dev) | unseen (test) | episodes |", "|---|---:|---:|---:|"]
        for label, a in r["agents"].items():
            sp = a["splits"]  # a plan of one split (--splits) leaves the other's cells empty
            out.append(f"| {display(label)} | " + " | ".join(_ci(sp[s]) if s in sp else "–" for s in ("seen", "unseen"))
                       + " | " + " / ".join(str(sp[s]["episodes"]) if s in sp else "–" for s in ("seen", "unseen"))
                       + " |")
        protocols = sorted({a["protocol"] for a in r["agents"].values()})
        out += ["", f"Score ×100 on the {' / '.join(protocols)} plan, mean with its 95 % stratified bootstrap CI.", ""]
        for label, a in r["agents"].items():
            if a.get("command") and a["command"] != r["command"]:
                out += [f"{display(label)}: trained and evaluated by an earlier run, `{a['command']}` (commit "
                        f"{a.get('commit')}); where that run trained its own backbone, its comparisons include the "
                        "variance between trainings.", ""]
        if r["comparisons"]:
            out += ["| comparison (B − A) | seen: difference [95 % CI] | MDE | unseen: difference [95 % CI] | MDE |",
                    "|---|---:|---:|---:|---:|"]
        for c in r["comparisons"]:
            cells = []
            for split in ("seen", "unseen"):
                d = c["splits"].get(split)
                cells += [difference_cell(SplitDifference.from_dict(d)), f"{d['mde']:.2f}"] if d else ["–", "–"]
            scale = f"{c['scale_a']:g} × " if c.get("scale_a", 1.0) != 1.0 else ""
            out.append(f"| {display(c['b'])} − {scale}{display(c['a'])} | " + " | ".join(cells) + " |")
        if r["comparisons"]:
            out += ["", "MDE: the minimum difference detectable at 80 % power with these episodes."]
        out += ["",
                "| mode | adapter | optimizer steps | epochs | best step | held-out loss before → best | "
                "tokens/s | minutes | `; true` precision / recall | segments reached / completed |",
                "|---|---|---:|---:|---:|---|---:|---:|---|---|"]
        for mode, t in r["training"].items():
            for adapter, m in t["adapters"].items():
                marker = m.get("completion_marker") or {}
                seg = m.get("segment_completion") or {}
                out.append(
                    f"| {mode} | {adapter} | {m['steps']} | {m['epochs_done']:.1f} | {m.get('best_step')} | "
                    f"{m['val_loss_before']:.3f} → {m.get('best_val_loss') or float('nan'):.3f} | "
                    + (f"{m['tokens_per_s']:.0f}" if m.get("tokens_per_s") else "–") + f" | {m['seconds'] / 60:.1f} | "
                    + (f"{marker['precision']:.2f} / {marker['recall']:.2f}" if marker else "–") + " | "
                    + (f"{seg['reached']:.2f} / {seg['completed']:.2f} (n={seg['segments']})" if seg else "–")
                    + " |")
        out.append("")
        if r.get("orl"):
            out += orl_rows(r["orl"])
    return "\n".join(out)


def orl_rows(orl: dict) -> list[str]:
    """The ORL runs: the actor's budget, and the critic's last round — does it rank the data?"""
    out = ["| ORL agent | adapter / role | actor steps | epochs | actor minutes | critic s | rounds | "
           "advantage by source (last round) | ESS | held-out ρ(A, G) |", "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for label, run in orl.items():
        for name, a in run["adapters"].items():
            for role, rounds in a["rounds"].items():
                last = rounds[-1] if rounds else {}
                groups = " ".join(f"{g} {v['advantage_mean']:+.3f}±{v['advantage_std']:.3f}"
                                  for g, v in (last.get("by_source") or {}).items())
                rho = (last.get("heldout") or {}).get("rank_correlation")
                out.append(f"| {display(label)} | {name} / {role} | {a['steps']} | {a['epochs_done']:.1f} | "
                           f"{(a['seconds'] or 0) / 60:.1f} | {a['critic_seconds'] or 0:.0f} | {len(rounds)} | {groups} | "
                           f"{(last.get('weights') or {}).get('effective_sample_size', float('nan')):.2f} | "
                           + ("–" if rho is None else f"{rho:.2f}") + " |")
    return [*out, ""]


BEGIN, END = "<!-- quality:begin (bench/quality.py writes this part) -->", "<!-- quality:end -->"


def update_page(page: Path, generated: str) -> None:
    """Replace the generated part of the results page, keeping the hand-written text around it."""
    text = page.read_text() if page.is_file() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"{head}{BEGIN}\n{generated}\n{END}{tail}")


if __name__ == "__main__":
    main()
