"""What every ``aevis`` command shares: options, help text, --json errors, --version, warnings."""

import json
import os
import subprocess
import sys

import pytest

from tensorboard_plugin_aevis import __version__
from tensorboard_plugin_aevis.cli import HelpFormatter, build_parser, main

BIN = os.path.dirname(sys.executable)


def commands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def test_version():
    result = subprocess.run([os.path.join(BIN, "aevis"), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"aevis {__version__}"


@pytest.mark.parametrize("name", ["demo", "analyze", "contribution", "evaluate", "bench"])
def test_every_command_has_the_shared_options_and_clean_help(name):
    command = commands()[name]
    options = {s for a in command._actions for s in a.option_strings}
    assert {"--device", "--json", "--progress", "--no-progress"} <= options
    text = command.format_help()
    assert ":func:" not in text and ":mod:" not in text and "``" not in text, text
    formatter = HelpFormatter(name)
    for action in command._actions:
        said = formatter._expand_help(action).lower() if action.help else ""
        assert said.count("default") <= 1, (action.option_strings, said)


def test_progress_defaults_to_the_terminal_and_can_be_forced():
    parser = build_parser()
    assert parser.parse_args(["bench"]).progress is None  # resolved by main: on when stderr is a terminal
    assert parser.parse_args(["bench", "--progress"]).progress is True
    assert parser.parse_args(["demo", "--no-progress"]).progress is False


def test_json_errors_are_one_json_object_with_a_non_zero_exit(capsys):
    code = main(["demo", "--json", "--device", "tpu"])
    out, err = capsys.readouterr()
    assert code == 2
    (line,) = out.strip().splitlines()
    answer = json.loads(line)
    assert answer["exit_code"] == 2 and answer["command"] == "demo" and "--device 'tpu'" in answer["error"]

    with pytest.raises(SystemExit) as exited:  # an argparse error (missing --model) under --json
        main(["analyze", "--json", "--photo", "chelsea"])
    out, _ = capsys.readouterr()
    assert exited.value.code == 2
    answer = json.loads(out.strip())
    assert "--model" in answer["error"] and answer["exit_code"] == 2


def test_text_errors_stay_one_line_on_stderr(capsys):
    assert main(["demo", "--device", "tpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == ["aevis demo: error: --device 'tpu' is not supported; use cpu or cuda[:N]"]


def test_module_factory_without_normalisation_warns(tmp_path, monkeypatch):
    (tmp_path / "my_plain_models.py").write_text(
        "from torch import nn\n"
        "def plain():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n"
        "def wrapped():\n"
        "    from tensorboard_plugin_aevis.models import ClassifierWrapper\n"
        "    return ClassifierWrapper(plain(), (0.5,) * 3, (0.25,) * 3)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from tensorboard_plugin_aevis.models import load_model

    with pytest.warns(UserWarning, match="unnormalised"):
        load_model("my_plain_models:plain")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model("my_plain_models:wrapped")  # its own normalisation: no warning
