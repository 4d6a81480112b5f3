from glider.server.policy import parse_executor_output, parse_subgoal, sanitize


def test_executor_output_parsing():
    assert parse_executor_output("open door to kitchen; true") == ("open door to kitchen", True)
    assert parse_executor_output(" go to kitchen ; FALSE\nObs: x") == ("go to kitchen", False)
    assert parse_executor_output("look around") == ("look around", False)
    assert parse_executor_output("look around; tr") == ("look around", False)
    assert parse_executor_output("; true") == (None, True)
    assert parse_executor_output("") == (None, False)
    assert parse_executor_output("  ...  ") == (None, False)


def test_subgoal_is_first_line_and_bounded():
    assert parse_subgoal("boil the water\nAction: x") == "boil the water"
    assert parse_subgoal("<|planner|>") is None
    long = parse_subgoal("a " * 500)
    assert long is not None and len(long) <= 202


def test_sanitize_flattens_and_strips_markers():
    assert sanitize("a\n\tb  <|executor|> c") == "a b c"
    assert sanitize("abcdef", limit=3) == "abc …"
    assert sanitize("x<|eos|>y", extra_tokens=["<|eos|>"]) == "x y"
