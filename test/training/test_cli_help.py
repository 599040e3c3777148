"""Every offline command answers `--help` (argparse formats each help string with `%`: one row
name with a per-cent sign in it broke `training.nuisance --help` once)."""

import importlib

import pytest

COMMANDS = [
    "training.evaluate",
    "training.nuisance",
    "training.pipeline",
    "training.promote",
    "training.recipe",
    "training.tune_bvae",
    "training.tune_flow",
    "training.adapt.cli",
    "training.compress.search",
    "training.data.generate",
    "training.data.import_recording",
    "training.data.merge",
    "training.data.pairs",
    "training.data.preview",
]


@pytest.mark.parametrize("module", COMMANDS)
def test_help(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
