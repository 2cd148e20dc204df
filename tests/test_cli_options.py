"""The ``rawks`` command's options: --version, help texts, flags made from TrainConfig, one list of data sets."""

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest

import rawks_triton
from rawks_triton.cli import build_parser, main
from rawks_triton.training import DATASETS, TrainConfig
from rawks_triton.training.config import command_line_fields, show_default


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"rawks {rawks_triton.__version__}"


def test_version_from_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "rawks_triton.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == f"rawks {rawks_triton.__version__}"


@pytest.mark.parametrize("command", ["train", "eval"])
def test_data_flags_have_help(command):
    parser = _subparser(command)
    for flag in ("--data", "--data-root", "--data-option"):
        assert _option(parser, flag).help, f"rawks {command} {flag} has no help text"
    assert "--data-root" in parser.format_help()


def test_every_train_flag_comes_from_a_config_field_with_its_default_in_the_help():
    parser = _subparser("train")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    flagged = command_line_fields()
    assert len(flagged) >= 25
    for name, kind, default, text in flagged:
        action = _option(parser, "--" + name.replace("_", "-"))
        assert action.dest == name
        assert action.default is None  # not given: TrainConfig's default (or, with --resume, the checkpoint's)
        assert default == defaults[name]
        assert kind is type(default) or default is None
        if default is not None:
            assert text.endswith(f"(default: {show_default(default)})"), text
        assert action.help == text
    assert show_default(2e-3) == "0.002" and show_default(2.0) == "2" and show_default("auto") == "auto"


def test_train_without_flags_gives_the_config_defaults(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, resume=False, overrides=None, stop_after=None):
        seen["config"] = config
        raise KeyboardInterrupt

    monkeypatch.setattr("rawks_triton.training.train", fake_train)
    assert main(["train"]) == 130
    assert seen["config"] == TrainConfig()


def test_one_list_of_data_sets():
    from rawks_triton.training.baselines import main as baseline_main
    from rawks_triton.training.data.registry import DATA_OPTIONS

    assert DATASETS == tuple(DATA_OPTIONS) == ("synthetic", "folder", "grabcut", "acdc", "acdc-volumes", "scribblesup")
    for command in ("train", "eval"):
        assert tuple(_option(_subparser(command), "--data").choices) == DATASETS
    with pytest.raises(SystemExit):
        baseline_main(["--data", "nonsense"])


def test_a_data_option_without_equals_is_one_error_line(capsys):
    assert main(["train", "--data-option", "train_count"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "rawks train: error: --data-option expects KEY=VALUE, got 'train_count'"


def test_the_public_names_of_the_training_package():
    import rawks_triton.training as training
    from rawks_triton.training.checkpoint import load_checkpoint, networks_from_checkpoint
    from rawks_triton.training.data.grabcut import GrabCutDataset
    from rawks_triton.training.propagate import downsample_scribbles

    assert training.load_checkpoint is load_checkpoint
    assert training.networks_from_checkpoint is networks_from_checkpoint
    assert training.GrabCutDataset is GrabCutDataset
    assert training.downsample_scribbles is downsample_scribbles
    for name in training.__all__:
        assert hasattr(training, name), name
