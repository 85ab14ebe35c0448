"""`wallaroo init NAME`: a new project folder made from one of the app skeletons.

The skeletons are the package `wallaroo_templates` (templates/wallaroo_templates/ in a
checkout), shipped in the wheel next to `wallaroo`, so `wallaroo init` works from an install
too. A skeleton's file ending in `.tmpl` is written without that suffix and with every `{{name}}`
replaced by the project's name; other files are copied as they are, `gitignore` as
`.gitignore` (a dotfile there would apply to this repository's own tree). The `.tmpl` suffix
keeps the skeletons' tests and pyproject.toml from being collected or read as this repository's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

from wallaroo.core.errors import WallarooError

if TYPE_CHECKING:
    from rich.console import Group

PACKAGE = "wallaroo_templates"
PLACEHOLDER = "{{name}}"
SUFFIX = ".tmpl"
RENAMED = {"gitignore": ".gitignore"}
NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
NAME_RULE_TEXT = ("a letter, then up to 63 letters, digits, '_' or '-' (e.g. word_count); "
                  "it names the folder and the app")


class Template(StrEnum):
    """The skeletons: what each makes is in its README.md."""

    stream = "stream"  # a keyed word count: key_extractor + state_computation
    functions = "functions"  # an App with @app.function()s and a @app.local_entrypoint()
    job = "job"  # a bounded FileSource job writing part files


# the commands to run next, shown after the files (each README.md says them too)
NEXT = {
    Template.stream: ["python -m pytest", "wallaroo dev app.py --input input.txt"],
    Template.functions: ["python -m pytest", "wallaroo run app.py"],
    Template.job: ["python -m pytest", "wallaroo run app.py", "cat totals/part-*"],
}


class ProjectNameError(WallarooError, ValueError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"project name {name!r} is not valid: use {NAME_RULE_TEXT}")


class ProjectExistsError(WallarooError, FileExistsError):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} exists and is not an empty folder: pick another name, or remove it first")


@dataclass(frozen=True)
class Created:
    """What `create` wrote: the folder, its files (relative to it), the template used."""

    folder: Path
    files: list[Path]
    template: Template


def check_name(name: str) -> str:
    if not NAME_RULE.fullmatch(name):
        raise ProjectNameError(name)
    return name


def create(name: str, template: Template, parent: Path) -> Created:
    """Write `parent/name` from `template`. An existing empty folder is filled; a non-empty
    one is refused before anything is written."""
    folder = parent / check_name(name)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ProjectExistsError(folder)
    skeleton = resources.files(PACKAGE) / template.value
    folder.mkdir(parents=True, exist_ok=True)
    files = [_write(source, folder, Path(RENAMED.get(source.name, source.name)), name)
             for source in _files(skeleton)]
    return Created(folder, sorted(files), template)


def _files(skeleton: Traversable) -> list[Traversable]:
    """The skeleton's files; flat on purpose: a subfolder would need its own package-data glob
    in pyproject.toml to reach the wheel."""
    return sorted((f for f in skeleton.iterdir() if f.is_file()), key=lambda f: f.name)


def _write(source: Traversable, folder: Path, relative: Path, name: str) -> Path:
    if relative.suffix != SUFFIX:
        (folder / relative).write_bytes(source.read_bytes())
        return relative
    target = relative.with_suffix("")
    (folder / target).write_text(source.read_text("utf-8").replace(PLACEHOLDER, name), "utf-8")
    return target


def summary(created: Created) -> Group:
    """What a terminal shows: the files as a tree, then the commands to run next."""
    # Imported here: the CLI imports this module for Template on every command (runners too),
    # and rich.console alone costs ~20 ms to import.
    from rich.console import Group
    from rich.text import Text
    from rich.tree import Tree

    tree = Tree(Text(f"{created.folder}/", style="bold"))
    for path in created.files:
        tree.add(str(path))
    steps = [f"cd {created.folder}", *NEXT[created.template]]
    return Group(Text(f"Created a {created.template.value} project:"), tree, Text(""),
                 Text("Next:"), *(Text(f"  {step}", style="cyan") for step in steps))
