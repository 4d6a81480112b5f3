"""Our ScienceWorld step is the package's step, minus the valid-action list nobody reads.

Played side by side on two JVMs: the package's own ``ScienceWorldEnv`` and ``open_env()``'s lean one, the same
gold path with wrong and repeated actions mixed in, compared move by move."""

from __future__ import annotations

import pytest

SHARED_INFO = ("moves", "score", "reward", "look", "inv", "variationIdx", "taskName", "simplificationStr")


@pytest.fixture(scope="module")
def package_env():
    from glider.clients.envs.scienceworld import jvm_options
    from scienceworld import ScienceWorldEnv

    with jvm_options():
        env = ScienceWorldEnv("", envStepLimit=100)
    yield env
    env.close()


@pytest.mark.parametrize(("task", "variation"), [("find-plant", 0), ("boil", 3)])
def test_the_lean_step_plays_exactly_as_the_package(scienceworld, package_env, task, variation):
    for env in (scienceworld, package_env):
        env.load(task, variation, "", generateGoldPath=True)
    # one gold path played on both: the worlds are the same, but the gold generator's own choices are not
    # seeded (find-plant's target plant differs between two loads of one variation)
    gold = list(package_env.get_gold_action_sequence())[:25]
    actions = ["jump over the moon", gold[0], gold[0], "look around", *gold[1:]]

    (lean_obs, lean_info), (obs, info) = scienceworld.reset(), package_env.reset()
    assert lean_obs == obs and {k: lean_info[k] for k in SHARED_INFO} == {k: info[k] for k in SHARED_INFO}
    assert "valid" not in lean_info and len(info["valid"]) > 10  # what the lean step leaves out
    scores = set()
    for action in actions:
        lean, full = scienceworld.step(action), package_env.step(action)
        assert lean[:3] == full[:3], action  # observation, reward, done
        assert {k: lean[3][k] for k in SHARED_INFO} == {k: full[3][k] for k in SHARED_INFO}, action
        scores.add(full[3]["score"])
    assert len(scores) > 1  # the path moved the score, so the comparison covered rewards
    # the list is still there for whoever asks
    assert sorted(scienceworld.get_valid_action_object_combinations()) == sorted(
        package_env.get_valid_action_object_combinations())


def test_the_grounded_runner_sends_the_package_s_commands_bounded_by_their_objects(scienceworld):
    from glider.clients.envs.scienceworld import ScienceWorld

    world = ScienceWorld("boil", 0, env=scienceworld, grounded=True)
    world.reset()
    for action in ("open door to kitchen", "go to kitchen"):
        step = world.step(action)
    everything = list(scienceworld.get_valid_action_object_combinations())
    assert step.valid_actions == everything and len(everything) > 1000  # the same commands, in the same order
    # over the bound: every command over one object or none is kept, then two-object ones fill it
    objects = {c["action"]: len(c["obj_ids"]) for c in scienceworld.get_valid_action_object_combinations_with_templates()}
    few = [c for c in everything if objects[c] <= 1]
    world.max_valid_actions = len(few) + 10
    bounded = world.valid_actions()
    assert len(bounded) == len(few) + 10 and set(few) <= set(bounded)
    assert sum(objects[c] == 2 for c in bounded) == 10 and set(bounded) <= set(everything)


def test_a_closed_environment_s_jvm_has_exited_so_garbage_collection_closes_nothing_twice(monkeypatch):
    import gc
    import sys

    from glider.clients.envs.scienceworld import open_env

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
    env = open_env()
    env.load("boil", 0, "")
    java = env._gateway.java_process
    env.close()
    assert java.poll() is not None  # the package's close returns while the JVM is still exiting
    env.close()  # twice, as the package's __del__ does
    del env
    gc.collect()
    assert unraisable == []


def test_a_process_that_exits_holding_an_open_environment_exits_promptly(tmp_path):
    """The collector's pool workers keep their environment in a module global and leave it to
    interpreter exit; py4j's reaper thread is frozen by then, and a blocking wait for the JVM hung
    the worker (and with it the pool's shutdown) for good.  Nor may the close print a traceback."""
    import subprocess
    import sys

    script = tmp_path / "exits.py"
    # held by a module-level name until exit, as the collector's workers hold theirs
    script.write_text("import glider.clients.envs.scienceworld as sw\n"
                      "sw.held_env = sw.open_env()\nsw.held_env.load('boil', 0, '')\nprint('loaded', flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
