"""ALFWorld without its game files (this machine cannot download them): a clear error, not a crash."""

import pytest
from glider.clients.envs.alfworld import ALFWorldUnavailable, list_games


def test_missing_data_says_what_is_needed(monkeypatch, tmp_path):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(ALFWorldUnavailable, match="set ALFWORLD_DATA"):
        list_games("seen")
    with pytest.raises(ALFWorldUnavailable, match="no json_2.1.1"):
        list_games("seen", tmp_path)
    (tmp_path / "json_2.1.1" / "valid_seen").mkdir(parents=True)
    with pytest.raises(ALFWorldUnavailable, match="no game.tw-pddl"):
        list_games("seen", tmp_path)
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        list_games("valid", tmp_path)


def test_games_are_listed_in_a_stable_order(tmp_path):
    for name in ["pick_and_place-b", "look_at_obj-a", "pick_and_place-a"]:
        game = tmp_path / "json_2.1.1" / "valid_unseen" / name / "trial_1" / "game.tw-pddl"
        game.parent.mkdir(parents=True)
        game.write_text("{}")
    games = list_games("unseen", tmp_path)
    assert [g.parent.parent.name for g in games] == ["look_at_obj-a", "pick_and_place-a", "pick_and_place-b"]


def test_play_refuses_alfworld_without_data(monkeypatch):
    from glider.clients.cli import app
    from typer.testing import CliRunner

    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    result = CliRunner().invoke(app, ["play", "--env", "alfworld", "--variations", "seen:0"])
    assert result.exit_code == 2 and "ALFWORLD_DATA" in result.output and "Traceback" not in result.output
