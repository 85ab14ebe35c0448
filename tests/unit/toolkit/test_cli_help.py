"""`wallaroo ... --help` for every command, run for real through typer's CliRunner: it works,
reads as written (no line broken mid-sentence), and no text in square brackets is taken for
rich markup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from wallaroo.cli import app

ROOT = typer.main.get_command(app)


# typer ships its own click: commands are duck-typed (a group has `commands`).
def commands(group: Any = ROOT, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*path, name))


def help_of(path: tuple[str, ...], columns: int) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res.output


def one_line(text: str) -> str:
    """How a help text reads once rendered: words joined by single spaces (markdown drops
    the backticks around code)."""
    return " ".join(text.replace("`", "").split())


@pytest.mark.parametrize(("path", "command"), list(commands()),
                         ids=[" ".join(p) or "wallaroo" for p, _ in commands()])
def test_every_help_text_reads_as_written_without_hard_line_breaks(
        path: tuple[str, ...], command: Any) -> None:
    """On a terminal wide enough, each text is one line: a line break written in a docstring
    or help string must not show (typer's rich mode keeps them, mid-sentence)."""
    lines = [" ".join(line.strip(" │").split()) for line in help_of(path, 1000).splitlines()]

    texts = [p.help for p in command.params if getattr(p, "help", None)]
    texts.append((command.help or "").split("\n\n")[0])
    if hasattr(command, "commands"):
        texts += [(sub.help or "").split("\n\n")[0] for sub in command.commands.values()]
    for text in filter(None, texts):
        assert any(one_line(text) in line for line in lines), (one_line(text), lines)


def test_square_brackets_in_help_are_text_not_markup() -> None:
    assert "sink name [default: all sinks]" in help_of(("tail",), 100)


def test_scale_takes_no_app() -> None:
    """The runner pool of `wallaroo dev` is shared by its apps: `scale` names none."""
    usage = next(line for line in help_of(("scale",), 100).splitlines() if "Usage:" in line)
    assert usage.split()[-2:] == ["scale", "[OPTIONS]"]


@pytest.mark.parametrize("args", [["send", "app", "src", "x", "--max-backlog", "-1"],
                                  ["dev", "app.py", "--max-backlog", "-1"]])
def test_a_max_backlog_below_its_range_is_a_usage_error(args: list[str], tmp_path: Any) -> None:
    (tmp_path / "app.py").write_text("")
    res = CliRunner().invoke(app, [a.replace("app.py", str(tmp_path / "app.py")) for a in args])
    assert res.exit_code == 2 and "--max-backlog" in res.output, res.output
