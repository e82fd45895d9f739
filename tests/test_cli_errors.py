"""Bad flags and bad config input end in one line `probing.<cmd>: error: ...`, exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from probing.cli import flag_error_line
from probing.config_files import REPO_ROOT


def test_misspelt_config_field_keeps_the_suggestion_in_one_line():
    error = AttributeError(
        repr('\'bacth_size\'\nDid you mean "batch_size" instead of "bacth_size"?')
    )
    line = flag_error_line(
        error, ["p", "--config=configs/demo.py", "--config.extract.bacth_size=4"]
    )
    assert line == (
        "--config.extract.bacth_size: the config has no field 'bacth_size'. "
        'Did you mean "batch_size" instead of "bacth_size"?'
    )


def test_config_file_exception_is_reduced_to_its_message():
    text = (
        "flag --config=configs/demo.py:smok: Error whilst parsing config file:\n\n"
        'Traceback (most recent call last):\n  File "configs/demo.py", line 19\n'
        "ValueError: config argument 'smok' is not one of caption, category\n"
    )
    assert flag_error_line(ValueError(text), []) == (
        "flag --config=configs/demo.py:smok: config argument 'smok' is not one of caption, category"
    )


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("PROBING_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--config=configs/nope.py", "No such file or directory: 'configs/nope.py'"),
        ("--config=configs/demo.py:smok", "config argument 'smok' is not one of"),
        ("--config.extract.bacth_size=4", 'Did you mean "batch_size"'),
    ],
)
def test_extract_cli_bad_config_is_one_line(tmp_path, flag, expected):
    config = [] if flag.startswith("--config=") else ["--config=configs/demo.py"]
    result = _run("probing.extract", *config, flag, f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probing.extract: error: ")
    assert expected in lines[0]
    assert not (tmp_path / "w").exists()
