"""The `glider adapters` commands an operator uses on a registry."""

from glider.clients.cli import app
from glider.server.adapters import AdapterRegistry
from typer.testing import CliRunner


def test_adapters_init_publish_list_prune(backbone_dir, tmp_path):
    runner = CliRunner()
    reg_root = tmp_path / "reg"
    common = ["--model", str(backbone_dir), "--adapters", str(reg_root)]
    r = runner.invoke(app, ["adapters", "init", "--names", "planner", *common])
    assert r.exit_code == 0, r.output
    assert "published v0001" in r.output
    r = runner.invoke(app, ["adapters", "init", "--names", "planner", *common])
    assert "has v0001 for this backbone already" in r.output  # idempotent
    src = reg_root / "planner" / "v0001"
    for _ in range(3):
        r = runner.invoke(app, ["adapters", "publish", str(src), "--role", "planner", *common])
        assert r.exit_code == 0, r.output
    reg = AdapterRegistry(reg_root)
    assert reg.current_version("planner") == "v0004"
    assert reg.get("planner").manifest["parent"] == "v0003"
    r = runner.invoke(app, ["adapters", "list", "--adapters", str(reg_root)])
    assert "v0004" in r.output and "planner" in r.output
    r = runner.invoke(app, ["adapters", "prune", "--keep", "1", "--adapters", str(reg_root)])
    assert r.exit_code == 0 and reg.versions("planner") == ["v0003", "v0004"]
    r = runner.invoke(app, ["adapters", "publish", str(tmp_path), "--role", "planner", *common])
    assert r.exit_code == 2 and "missing adapter_config.json" in r.output and "Traceback" not in r.output
    assert reg.versions("planner") == ["v0003", "v0004"]


def test_task_family_list_is_the_environments(scienceworld):
    from glider.clients.envs.scienceworld import TASK_FAMILIES

    assert list(TASK_FAMILIES) == list(scienceworld.get_task_names())


def test_every_setting_is_a_serve_flag_and_defaults_come_from_the_configs():
    import typer
    from glider.server.settings import Settings
    from glider.trainer.sft import SFTConfig

    command = typer.main.get_command(app)
    serve = {p.name: p for p in command.commands["serve"].params}
    assert set(serve) == set(Settings.model_fields)
    assert "--c-max" in serve["c_max"].opts and "--no-record" in serve["record"].secondary_opts
    assert all(p.default is None for p in serve.values())  # unset flags leave GLIDER_* and the defaults alone
    sft = {p.name: p for p in command.commands["train"].commands["sft"].params}
    assert sft["lr"].default is None and f"default: {SFTConfig().train.lr}" in sft["lr"].help


def test_a_serve_flag_reaches_the_settings(monkeypatch):
    from glider.clients.cli import serve as serve_module

    seen = {}
    monkeypatch.setattr("glider.server.app.serve", lambda s: seen.setdefault("settings", s) and 0)
    r = CliRunner().invoke(app, ["serve", "--c-max", "7", "--no-record", "--mode", "flat"])
    assert r.exit_code == 0, r.output
    s = seen["settings"]
    assert (s.c_max, s.record, s.mode.value) == (7, False, "flat") and serve_module.serve.__name__ == "serve"
