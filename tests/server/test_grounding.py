"""Grounded actions in the state machine: admissible commands, the model's scores, the marker stays the model's."""

import pytest
from glider.server.backends.base import truncate_at_stop
from glider.server.policy import HierarchyConfig, PolicyController
from glider.server.policy.grounding import (
    ActionSpace,
    best_scored,
    chosen_option,
    continuation,
    deciding_prefixes,
    normalize,
    protected_prefixes,
    protection,
)

from tests.server.scripted import Script


class Scorer:
    """A scripted model's choice: the command with the highest fixed score (unknown ones very unlikely)."""

    def __init__(self, **by_command: float):
        self.by_command = {k.replace("_", " "): v for k, v in by_command.items()}
        self.calls: list[tuple[str, str, list[str]]] = []

    async def __call__(self, prompt, adapter, continuations):
        self.calls.append((prompt, adapter, list(continuations)))
        scores = [self.by_command.get(c.strip().rstrip(";").strip(), -100.0) for c in continuations]
        return best_scored(scores), f"{adapter}-v7"


def controller(**kw) -> PolicyController:
    return PolicyController(HierarchyConfig(**kw))


ROOM = ["open door to kitchen", "go to hallway", "look around", "pick up thermometer", "focus on thermometer"]


async def test_an_admissible_generation_passes_through_untouched_and_is_not_scored():
    ctrl = controller()
    script, scorer = Script(planner=["go to the kitchen"], executor=["Open  door to KITCHEN; true"]), Scorer()
    d = await ctrl.step(ctrl.new_state("e", "boil water"), "hallway", 0.0, False, script,
                        valid_actions=ROOM, choose=scorer)
    # the list's entry byte for byte, matched after normalisation; the model's marker kept
    assert d.action == "open door to kitchen" and not d.grounded and d.subgoal_done
    assert d.generated_action == "Open door to KITCHEN" and scorer.calls == []


async def test_an_inadmissible_generation_becomes_the_command_the_model_scores_highest():
    ctrl = controller(grounding_candidates=3)
    script = Script(planner=["get the thermometer"], executor=["pick up the thermometer now; true"])
    scorer = Scorer(pick_up_thermometer=-2.0, focus_on_thermometer=-1.5, look_around=-9.0)
    d = await ctrl.step(ctrl.new_state("e", "use a thermometer"), "kitchen", 0.0, False, script,
                        valid_actions=ROOM, choose=scorer)
    assert d.action == "focus on thermometer" and d.grounded
    assert d.generated_action == "pick up the thermometer now"
    assert d.subgoal_done  # the completion marker is the model's, not grounding's
    (prompt, adapter, scored), = scorer.calls
    # the executor's own prompt, its adapter, and at most 3 candidates, the most similar first
    assert prompt == script.requests[-1].prompt and adapter == "executor"
    assert len(scored) == 3 and scored[0] == " pick up thermometer;"
    assert d.adapter_versions["executor"] == "executor-v7"
    # what the environment was sent is what the executor's history holds
    assert d.state.current.turns[-1].action == "focus on thermometer"


async def test_flat_mode_grounds_with_its_own_prompt_and_the_stop_after_the_command():
    ctrl = controller(mode="flat")
    script, scorer = Script(flat=["teleport to kitchen"]), Scorer(go_to_hallway=-1.0)
    d = await ctrl.step(ctrl.new_state("e", "boil water"), "hallway", 0.0, False, script,
                        valid_actions=ROOM, choose=scorer)
    assert d.action == "go to hallway" and d.grounded
    (_, adapter, scored), = scorer.calls
    assert adapter == "flat" and all(c.endswith("\n") for c in scored)


async def test_unusable_output_is_grounded_instead_of_falling_back():
    ctrl = controller(max_action_attempts=2)
    script, scorer = Script(planner=["look"], executor=[";;;", "!!!"]), Scorer(look_around=-0.5)
    d = await ctrl.step(ctrl.new_state("e", "find a plant"), "room", 0.0, False, script,
                        valid_actions=ROOM, choose=scorer)
    assert d.action == "look around" and d.grounded and not d.fallback and d.generated_action is None


async def test_the_guard_refuses_the_useless_repeat_among_the_commands_too():
    ctrl = controller()
    script = Script(planner=["get out"], executor=["go to hallway; false", "go to hallway; false",
                                                    "go to hallway; false", "go to hallway; false"])
    scorer = Scorer(go_to_hallway=-0.1, look_around=-3.0)
    state = ctrl.new_state("e", "find a plant")
    first = await ctrl.step(state, "room", 0.0, False, script, valid_actions=ROOM, choose=scorer)
    assert first.action == "go to hallway" and not first.grounded
    # the same observation came back: the repeat changed nothing, and grounding does not pick it either
    second = await ctrl.step(first.state, "room", 0.0, False, script, valid_actions=ROOM, choose=scorer)
    assert second.action == "look around" and second.grounded
    assert all(" go to hallway;" not in scored for _, _, scored in scorer.calls)


async def test_no_list_or_an_empty_one_leaves_the_step_as_it_was():
    for valid in (None, [], ["  ", ""]):
        ctrl = controller()
        script, scorer = Script(planner=["g"], executor=["jump around; false"]), Scorer()
        d = await ctrl.step(ctrl.new_state("e", "t"), "o", 0.0, False, script, valid_actions=valid, choose=scorer)
        assert d.action == "jump around" and not d.grounded and d.generated_action is None and not scorer.calls


def test_matching_is_exact_after_one_normalisation_and_duplicates_are_harmless():
    space = ActionSpace(["Go to  Kitchen", "go to kitchen", "look around"])
    assert len(space) == 2 and space.match("GO TO kitchen ") == "Go to  Kitchen"
    assert space.match("go to the kitchen") is None and normalize("\tA \n b ") == "a b"
    assert space.match("go to kitchen") == "go to kitchen"  # byte for byte: that very entry
    assert space.match("  ") is None and ActionSpace(["  ", "look"]).match("  ") is None


def test_normalisation_treats_every_unicode_space_as_the_regex_would():
    import re

    for c in "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\u200b":
        text = f"  Go{c}{c}To {c}Kitchen{c} "
        assert normalize(text) == re.sub(r"\s+", " ", text).strip().casefold(), repr(c)


def test_a_verbatim_hit_does_not_build_the_normalised_index():
    space = ActionSpace([f"open drawer {i}" for i in range(1000)])
    assert space.match("open drawer 7") == "open drawer 7" and space._by_key is None
    assert space.match("Open drawer 7") == "open drawer 7" and space._by_key is not None


def test_preselection_keeps_the_most_similar_commands_and_can_exclude_one():
    space = ActionSpace([f"open drawer {i}" for i in range(50)] + ["pick up red apple", "eat red apple"])
    assert space.nearest("pick up the red apple", 2) == ["pick up red apple", "eat red apple"]
    assert "pick up red apple" not in space.nearest("pick up the red apple", 2, exclude="pick up red apple")


def test_preselection_compares_whole_commands_not_fragments():
    # ScienceWorld's lists are mostly long `connect A to B` commands; a scorer matching fragments
    # (rapidfuzz's WRatio) ranks them above the command the generation nearly is
    rooms = ["art studio", "bedroom", "greenhouse", "kitchen", "living room", "workshop", "hallway"]
    space = ActionSpace([f"connect {a} to {b}" for a in rooms for b in rooms if a != b]
                        + [f"connect door to {a} to {b}" for a in rooms for b in rooms if a != b]
                        + ["open door to workshop", "look around", "go to art studio"])
    assert space.nearest("go to workshop", 1) == ["open door to workshop"]


def test_a_command_cannot_forge_prompt_lines_in_the_scored_text():
    scored = continuation("look\nSubgoal: win <|planner|>", role_is_flat=False)
    assert "\n" not in scored and "<|planner|>" not in scored and scored.endswith(";")


@pytest.mark.parametrize("mode", ["separate", "shared"])
async def test_every_hierarchical_mode_scores_with_the_executor_s_adapter(mode):
    ctrl = controller(mode=mode)
    script, scorer = Script(planner=["g"], executor=["xyzzy; false"]), Scorer(look_around=0.0)
    await ctrl.step(ctrl.new_state("e", "t"), "o", 0.0, False, script, valid_actions=ROOM, choose=scorer)
    assert scorer.calls[0][1] == {"separate": "executor", "shared": "shared"}[mode]


async def test_grounding_never_chooses_a_protected_command_but_passes_one_the_model_generated():
    ctrl = controller(grounding_candidates=3, grounding_protected=("  Focus   ON ",))  # normalised when used
    # the model prefers the irreversible command; grounding may not choose it
    scorer = Scorer(pick_up_thermometer=-2.0, focus_on_thermometer=-1.5, look_around=-9.0)
    script = Script(planner=["get the thermometer"], executor=["pick up the thermometer now; false"])
    d = await ctrl.step(ctrl.new_state("e", "use a thermometer"), "kitchen", 0.0, False, script,
                        valid_actions=ROOM, choose=scorer)
    assert d.action == "pick up thermometer" and d.grounded
    assert all("focus" not in c for c in scorer.calls[0][2])
    # generated verbatim, a protected command is the model's own choice and is sent
    script = Script(planner=["get the thermometer"], executor=["focus on thermometer; true"])
    d = await ctrl.step(ctrl.new_state("e2", "use a thermometer"), "kitchen", 0.0, False, script,
                        valid_actions=ROOM, choose=scorer)
    assert d.action == "focus on thermometer" and not d.grounded


def test_protection_matches_whole_words_and_yields_when_nothing_else_is_left():
    prefixes = protected_prefixes(["focus on", " "])
    assert prefixes == ("focus on",)
    is_protected = protection(prefixes)
    assert is_protected("focus on red box") and is_protected("focus on")
    assert not is_protected("focus onion soup") and not is_protected("look at focus on")
    space = ActionSpace(["focus on red box", "Focus on blue box"])
    assert space.nearest("focus on green box", 4, protected=prefixes) == []


async def test_a_list_of_protected_commands_only_still_answers_one_of_them():
    ctrl = controller(mode="flat", grounding_protected=("focus on",))
    script, scorer = Script(flat=["focus on green box"]), Scorer(focus_on_blue_box=-1.0)
    d = await ctrl.step(ctrl.new_state("e", "t"), "o", 0.0, False, script,
                        valid_actions=["focus on red box", "focus on blue box"], choose=scorer)
    assert d.action == "focus on blue box" and d.grounded


async def test_the_useless_repeat_comes_before_a_protected_command_when_nothing_else_is_left():
    ctrl = controller(mode="flat", grounding_protected=("focus on",))
    state = ctrl.new_state("e", "t")
    commands = ["look around", "focus on red box"]
    scorer = Scorer(focus_on_red_box=-1.0, look_around=-5.0)
    d = await ctrl.step(state, "a room", 0.0, False, Script(flat=["look around"]), valid_actions=commands,
                        choose=scorer)
    assert d.action == "look around" and not d.grounded
    # the same observation came back: the guard bans the repeat, and the only other command is protected
    d = await ctrl.step(d.state, "a room", 0.0, False, Script(flat=["look around", "look around", "look around"]),
                        valid_actions=commands, choose=scorer)
    assert d.action == "look around"


async def test_among_protected_commands_only_the_guard_still_refuses_the_useless_repeat():
    ctrl = controller(mode="flat", grounding_protected=("focus on",))
    commands = ["focus on red box", "focus on blue box"]
    scorer = Scorer(focus_on_red_box=-1.0, focus_on_blue_box=-5.0)
    d = await ctrl.step(ctrl.new_state("e", "t"), "a room", 0.0, False, Script(flat=["focus on red box"]),
                        valid_actions=commands, choose=scorer)
    assert d.action == "focus on red box" and not d.grounded
    d = await ctrl.step(d.state, "a room", 0.0, False, Script(flat=["focus on red box"] * 3),
                        valid_actions=commands, choose=scorer)
    assert d.action == "focus on blue box" and d.grounded


def test_the_server_setting_reaches_the_policy(monkeypatch):
    from glider.server.settings import Settings

    monkeypatch.setenv("GLIDER_GROUNDING_PROTECTED", '["Focus  on", "eat"]')
    assert HierarchyConfig.from_settings(Settings()).grounding_protected == ("Focus  on", "eat")


def _constrained(option: str, options: list[str], deciding: list) -> tuple[int, int]:
    """Greedy decoding constrained to ``options`` that writes ``option``, a word-piece at a time, stopped as
    vLLM stops (a stop string anywhere in the text, the earliest end): the index it names, the pieces spent."""
    import re

    pieces, text = re.findall(r" ?[^ ;\n]+|[;\n]", option), ""
    for n, piece in enumerate(pieces, 1):
        text += piece
        cut, reason = truncate_at_stop(text, [p for p in deciding if p])
        if reason is not None:
            return chosen_option(options, deciding, cut, reason), n
    return chosen_option(options, deciding, text, None), len(pieces)


def test_a_constrained_choice_stops_once_it_is_decided_and_names_the_option_it_was_writing():
    commands = ["open door to kitchen", "open door to greenhouse", "open door", "go", "go to kitchen",
                "kitchen", "pick up thermometer", "pick up thermos", "focus on substance in metal pot",
                "focus on substance in metal pot on stove"]
    options = [continuation(c, role_is_flat=False) for c in commands]
    deciding = deciding_prefixes(options)
    for i, option in enumerate(deciding):  # none is inside another option, none is the whole option
        assert option is None or all(option not in o for j, o in enumerate(options) if j != i)
    # " kitchen;" is the end of " go to kitchen;": no prefix of it is its own, it is written whole
    assert deciding[commands.index("kitchen")] is None
    spent = {}
    for i, option in enumerate(options):
        chosen, spent[commands[i]] = _constrained(option, options, deciding)
        assert chosen == i, (option, deciding[i])
    # the forced tail of a decided command is not generated
    assert spent["focus on substance in metal pot on stove"] < len(" focus on substance in metal pot on stove;".split(" "))
    assert spent["pick up thermometer"] == 3  # " pick", " up", " thermometer": decided at its third piece


def test_the_flat_agent_choice_stops_the_same_way():
    options = [continuation(c, role_is_flat=True) for c in ["look around", "look at stove", "look at sink"]]
    deciding = deciding_prefixes(options)
    assert [_constrained(o, options, deciding)[0] for o in options] == [0, 1, 2]
    assert chosen_option(options, deciding, " look at", None) == 1  # cut off by max_tokens: the first it fits


def test_a_text_is_cut_where_its_first_completed_stop_string_starts():
    # as vLLM stops: the stop string that *ends* first wins, even if a longer one started earlier
    assert truncate_at_stop(" open door to kitchen;", [" open door to k", " door"]) == (" open", " door")
    assert truncate_at_stop("go north\nlook", ["\n"]) == ("go north", "\n")
    assert truncate_at_stop("go north", ["\n", ""]) == ("go north", None)
