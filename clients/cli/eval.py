"""``glider eval ...``: the evaluation harness on the command line (``glider.clients.evaluate``).

    glider eval run --out DIR [--protocol glider|eto|quick|quick-ci|tune|PLAN.json] play a plan, print the table
    glider eval compare RUN_A RUN_B                                              paired B − A with CIs
    glider eval plan --protocol glider|eto|tune                                  (re)build a committed plan file
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from glider.clients.cli._common import console, require
from rich.markdown import Markdown

app = typer.Typer(no_args_is_help=True, help="Evaluate agents on the papers' protocols, with CIs.")



def _custom_plan(env: str, tasks: str, episodes: int, seed: int, splits: str, max_steps: int):
    """An ad-hoc plan (``--protocol custom``): N variations per family drawn from a seed."""
    from glider.clients.envs.scienceworld import TASK_FAMILIES
    from glider.clients.protocols import Plan, scienceworld_variations

    split_list = tuple(s for s in splits.split(",") if s)
    if not split_list or any(s not in ("seen", "unseen") for s in split_list):
        raise typer.BadParameter("seen and/or unseen", param_hint="--splits")
    names = [t for t in tasks.split(",") if t]
    if env == "scienceworld":
        names = names or list(TASK_FAMILIES)
        counts = scienceworld_variations(names, split_list)
    else:
        if not names:
            raise typer.BadParameter(f"--protocol custom on {env} needs --tasks", param_hint="--tasks")
        counts = {(s, t): range(episodes) for s in split_list for t in names}  # games by seed offset
    return Plan.draw(names, counts, episodes, seed, split_list, env=env, max_steps=max_steps)


@app.command("run")
def run_command(
    out: Annotated[Path, typer.Option(help="Run directory: episodes, transcripts, table, plots. A run "
                                           "restarted on it plays only what is missing.")],
    protocol: Annotated[str, typer.Option(help="glider (GLIDER's evaluator) | eto | quick (one episode per "
                                               "family and split) | quick-ci | tune (dev episodes outside "
                                               "the glider plan, to choose settings on) | custom | a plan file")]
    = "glider",
    server: Annotated[str | None, typer.Option(help="host:port (grpc) or http://host:port (rest).")] = None,
    transport: Annotated[str, typer.Option(help="grpc | rest")] = "grpc",
    parallel: Annotated[int | None, typer.Option(
        help="Episodes in flight, one environment each (default: as many as free memory holds, up to 24).")] = None,
    timeout: Annotated[float | None, typer.Option(
        min=1.0, help="Seconds one step's request may take (default: the SDK's 60; a slow backbone with many "
                      "episodes in flight needs more, and a step cut off replays its episode).")] = None,
    policy: Annotated[str, typer.Option(help="server: the agent | gold: replay gold paths with no model "
                                             "(the environment's throughput floor)")] = "server",
    label: str = "",
    env: Annotated[str, typer.Option(help="custom protocol: scienceworld | textworld")] = "scienceworld",
    tasks: Annotated[str, typer.Option(help="custom protocol: task families, comma-separated.")] = "",
    episodes: Annotated[int, typer.Option(help="custom protocol: episodes per family and split.")] = 2,
    splits: Annotated[str, typer.Option(help="custom protocol: seen and/or unseen.")] = "seen,unseen",
    max_steps: Annotated[int, typer.Option(help="custom protocol: step cap.")] = 50,
    seed: Annotated[int, typer.Option(help="custom protocol: draws the variations.")] = 0,
    temperature: Annotated[float | None, typer.Option(
        help="Sample every episode at this temperature, each with its own seed (default: the server's "
             "settings, greedy; the protocols are scored greedy).")] = None,
    sampling_seed: Annotated[int, typer.Option(help="With --temperature: the seed each episode's own is drawn "
                                                    "from (recorded per episode).")] = 0,
    grounded: Annotated[bool, typer.Option(
        help="Send the environment's admissible commands with every step: the agent answers one of them. "
             "A run of its own, reported apart from the free-generation protocols.")] = False,
    profile: Annotated[str | None, typer.Option(
        help="The server's agent profile that plays every episode (default: the server's default profile).")]
    = None,
    checkpoints: Annotated[str, typer.Option(
        help="Evaluate several adapter versions in turn (a learning curve): 'v0002,v0003' or "
             "'planner=v0002+executor=v0003,...'; needs the admin token (GLIDER_ADMIN_TOKEN).")] = "",
    admin_url: Annotated[str, typer.Option(envvar="GLIDER_ADMIN_URL",
                                           help="The server's REST address for the admin calls of --checkpoints.")]
    = "http://127.0.0.1:8000",
):
    """Play a protocol's plan through a server and print the paper's table with 95 % CIs."""
    require("envs", command="eval run")
    from glider.clients.evaluate import (
        EvalConfig,
        Summary,
        parse_checkpoint,
        plot_curve,
        run_episodes,
        write_report,
    )
    from glider.clients.protocols import load_plan
    from glider.clients.sdk import GliderClient
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if transport not in ("grpc", "rest"):
        raise typer.BadParameter("grpc | rest", param_hint="--transport")
    if policy not in ("server", "gold"):
        raise typer.BadParameter("server | gold", param_hint="--policy")
    if protocol == "custom":
        plan = _custom_plan(env, tasks, episodes, seed, splits, max_steps)
    else:
        try:
            plan = load_plan(protocol)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--protocol") from None
    if server is None:
        server = "127.0.0.1:50051" if transport == "grpc" else "http://127.0.0.1:8000"
    if temperature is not None and temperature < 0:
        raise typer.BadParameter("a temperature is 0 (greedy) or more", param_hint="--temperature")
    if temperature is not None and policy == "gold":
        raise typer.BadParameter("a gold replay has no model to sample", param_hint="--temperature")
    if grounded and policy == "gold":
        raise typer.BadParameter("a gold replay has no model to ground", param_hint="--grounded")
    cfg = EvalConfig(plan=plan, server=server, transport=transport, policy=policy,
                     parallel=parallel, temperature=temperature, seed=sampling_seed, grounded=grounded,
                     profile=profile, timeout=timeout)
    console.print(plan.describe())

    def one_run(run_label: str, run_out: Path, meta: dict) -> Summary:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[steps]} steps"))
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(run_label or plan.protocol, total=len(plan.episodes), steps=0)
            counted = {"steps": 0}

            def advance(result):
                counted["steps"] += result.steps
                progress.update(bar, advance=1, steps=counted["steps"])

            try:
                results = run_episodes(cfg, out=run_out, on_done=advance)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--out") from None
        summary = write_report(results, run_out, plan, label=run_label, meta=meta)
        console.print(Markdown((run_out / "table.md").read_text()))
        return summary

    meta = {"server": server, "transport": transport, "policy": policy, "parallel": cfg.parallel,
            "sampling": cfg.sampling_settings()}
    if grounded:  # a grounded run's table says so: it is never read as the paper's protocol
        label = f"{label} (grounded)" if label else "grounded"
    if not checkpoints:
        one_run(label, out, meta)
        console.print(f"written to {out}")
        return
    token = os.environ.get("GLIDER_ADMIN_TOKEN")
    if not token:
        raise typer.BadParameter("--checkpoints needs GLIDER_ADMIN_TOKEN (the server's admin token)")
    rest = server if server.startswith("http") else admin_url
    with GliderClient(rest) as client:
        health = client.ready()
        if health is None:
            raise typer.BadParameter(f"server at {rest} is not ready", param_hint="--server")
        original = dict(health.adapters)
        points = []
        try:
            for spec in [c for c in checkpoints.split(",") if c]:
                versions = parse_checkpoint(spec, list(original))
                for name, version in versions.items():
                    client.load_adapter(name, version, token=token, profile=profile)
                points.append((spec, one_run(spec, out / spec.replace("=", "-").replace("+", "_"),
                                             {**meta, "adapters": versions})))
        finally:
            for name, version in original.items():  # leave the server as it was
                client.load_adapter(name, version, token=token, profile=profile)
    plot_curve(points, out)
    (out / "curve.json").write_text(json.dumps([{"checkpoint": c, "overall": s.to_dict()["overall"]}
                                                for c, s in points], indent=2))
    console.print(f"learning curve written to {out / 'curve.png'}")


@app.command("compare")
def compare_command(
    run_a: Annotated[Path, typer.Argument(help="The baseline run's directory (A).")],
    run_b: Annotated[Path, typer.Argument(help="The other run's directory (B): B − A is reported.")],
    out: Annotated[Path | None, typer.Option(help="Also write the comparison as JSON here.")] = None,
    scale_a: Annotated[float, typer.Option(
        help="Report B − SCALE·A instead: a ratio target (B ≥ 1.15 × A) holds when its CI is above 0.")] = 1.0,
):
    """B − A paired episode by episode: per split the difference with its 95 % CI and the minimum
    detectable difference at 80 % power, and the per-family differences."""
    require("envs", command="eval compare", modules=("numpy",))
    from glider.clients.evaluate import compare_runs, comparison_markdown

    try:
        cmp = compare_runs(run_a, run_b, scale_a=scale_a)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not cmp.splits:
        raise typer.BadParameter(f"{run_a} and {run_b} share no episode")
    console.print(Markdown(comparison_markdown(cmp, str(run_a), str(run_b))))
    if out is not None:
        out.write_text(json.dumps(cmp.to_dict(), indent=2))


@app.command("plan")
def plan_command(
    protocol: Annotated[str, typer.Option(help="glider | eto | tune")] = "glider",
    seed: Annotated[int, typer.Option(help="glider, tune: draws the variations (the committed plans use 0).")]
    = 0,
    out: Annotated[Path | None, typer.Option(help="Where to write it (default: the committed plan file).")]
    = None,
):
    """Build a protocol's plan file from the papers' sources (a maintainer's command: plans are committed)."""
    require("envs", command="eval plan")
    from glider.clients.protocols import (
        build_eto_plan,
        build_glider_plan,
        build_tune_plan,
        glider_counts,
        load_plan,
        plan_path,
        scienceworld_variations,
    )

    if protocol == "glider":
        plan = build_glider_plan(scienceworld_variations(glider_counts()), seed)
    elif protocol == "tune":
        from glider.trainer.pipeline import full_recipe_variations

        variations = scienceworld_variations(glider_counts(), splits=("seen", "train"))
        collected, held_out = full_recipe_variations({t: v for (s, t), v in variations.items() if s == "train"})
        plan = build_tune_plan(variations, load_plan("glider"), collected, held_out, seed=seed)
    elif protocol == "eto":
        plan = build_eto_plan()
    else:
        raise typer.BadParameter("glider | eto | tune", param_hint="--protocol")
    path = out or plan_path(protocol)
    path.write_text(plan.to_json())
    console.print(f"{plan.describe()} -> {path}")
