"""Values the command line must refuse with one line naming the problem, before anything
runs (no traceback, exit code 1)."""

from __future__ import annotations

import pytest

from augreg_nb import cli

VTAB_CHECK = ["vtab", "--checkpoint", "B/16", "--tasks", "dtd", "--check"]


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--set", "workdir="], "workdir must be None or a folder path"),
    (["sweep", "--set", "workdir="], "workdir must be None or a folder path"),
    (["finetune", "--set", "seed=-1"], "seed must be a whole number from 0"),
    (["finetune", "--heartbeat-timeout", "0"], "--heartbeat-timeout 0 must be a whole number"),
    (["finetune", "--heartbeat-timeout", "-5"], "--heartbeat-timeout -5 must be"),
    ([*VTAB_CHECK, "--set", "bogus=1"], "unknown config field 'bogus'"),
    ([*VTAB_CHECK, "--set", "total_steps=abc"],
     "override 'total_steps=abc': total_steps must be a whole number >= 1"),
    ([*VTAB_CHECK, "--set", "base_lr"], "override 'base_lr' is not key=value"),
    ([*VTAB_CHECK, "--set", "data_dir"], "override 'data_dir' is not key=value"),
    ([*VTAB_CHECK, "--resolution", "0"], "resolution=0 is invalid"),
    (["finetune", "--set", "x" * 5000 + "=1"], "5,000 characters"),
    (["finetune", "--set", "if_different=maybe"], "if_different must be one of"),
])
def test_bad_values_are_refused_in_one_line(argv, message, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and len(err) < 400


def test_a_long_library_message_is_cut_to_a_bounded_error(capsys, monkeypatch):
    from augreg_nb.cli import training

    def talkative(args):
        raise ValueError("first line\n" + "\n".join(f"line {i}" for i in range(500))
                         + "\n" + "x" * 9000)

    monkeypatch.setattr(training, "_cmd_finetune", talkative)
    assert cli.main(["finetune"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("augreg-nb finetune: error: first line") and "line 23" in err
    assert "line 24" not in err and "477 more lines; -v shows them all" in err
    assert len(err) < 3000
