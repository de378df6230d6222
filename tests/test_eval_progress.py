"""The evaluation's progress: plain lines with the elapsed time when stdout is piped, a tqdm
bar on a terminal, nothing outside `fondtrain eval` or on other ranks."""

from __future__ import annotations

import io
import re
import sys

from fondtrain.eval import progress


def _count_to(total: int, *steps: int) -> None:
    bar = progress.Progress("convergence", total)
    for done in steps:
        bar.at(done)


def test_piped_lines_say_the_steps_and_the_elapsed_time(capsys, monkeypatch):
    with progress.shown():
        _count_to(20, 5, 10, 20)  # within EVERY_S: only the last line
        monkeypatch.setattr(progress, "EVERY_S", 0.0)
        _count_to(20, 5, 20)
    assert capsys.readouterr().out.splitlines() == [
        "convergence: 20/20 steps (100%), 0 s elapsed",
        "convergence: 5/20 steps (25%), 0 s elapsed", "convergence: 20/20 steps (100%), 0 s elapsed"]


def test_quiet_outside_the_eval_command_and_on_other_ranks(capsys, monkeypatch):
    _count_to(20, 20)
    monkeypatch.setenv("RANK", "1")
    with progress.shown():
        _count_to(20, 20)
    assert capsys.readouterr().out == ""


def test_a_terminal_gets_a_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    with progress.shown():
        _count_to(20, 5, 20)
    assert re.search(r"convergence: .*/20 \[", sys.stdout.getvalue())  # drawn, then cleared (leave=False)
