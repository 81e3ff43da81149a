"""`make demo` ends with what to run next, and every command it names is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import edgemeta.cli.demo as demo
from edgemeta.cli import _parser
from tests.harness import ROOT, cli_in_process


def test_the_demo_prints_its_table_then_the_next_steps(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "run_demo", lambda *args: "| the table |")  # the real run: tests/cli/test_cli.py (slow)
    result = cli_in_process("demo", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "| the table |\n" + demo.next_steps(tmp_path / "demo") + "\n"


def test_the_next_steps_name_commands_the_cli_accepts_and_files_that_exist():
    text = demo.next_steps("runs/demo", "edgemeta")
    assert text.splitlines()[1] == "Next:"
    commands = [shlex.split(c) for c in re.findall(r"edgemeta ([a-z]+ [^,;)]*?)(?=\s*(?:$|,|\)|\n))", text, re.M)]
    assert [c[:2] for c in commands] == [["device", "serve"], ["deploy", "runs/demo/bundle-int8"], ["device", "serve"]]
    for argv in commands[:2]:
        _parser(argv).parse_args(argv)  # SystemExit (a test failure) on an option the command does not have
    assert "--preset photos" in text and "http://127.0.0.1:8765/" in text and "--bundle runs/demo/bundle-int8" in text
    for path in re.findall(r"\b(?:docs|examples)/[\w.-]+", text):
        assert (ROOT / path).is_file(), path
    assert re.search(r"^demo-photos:", (ROOT / "Makefile").read_text(), re.M)


def test_the_command_is_one_the_user_can_type():
    command = demo.edgemeta_command()
    assert command == "edgemeta" and shutil.which("edgemeta") or Path(command).is_file()
