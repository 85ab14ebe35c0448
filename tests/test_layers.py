"""The dependency direction is the architecture (DESIGN.md, "Layers"): every import of every
module in toolkit/ and runtime/, function-level ones included, is checked against it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"wallaroo": ROOT / "toolkit" / "wallaroo",
            "wallaroo_runtime": ROOT / "runtime" / "wallaroo_runtime"}
AUTHORING = {"wallaroo", "wallaroo.api", "wallaroo.pipeline", "wallaroo.plan", "wallaroo.windows",
             "wallaroo.batches", "wallaroo.builder", "wallaroo.connectors", "wallaroo.testing",
             "wallaroo.functions", "wallaroo.schedules"}
# layer -> the layers it may import. The runtime never reaches the CLI side (control, local,
# cli); the CLI side reaches the runtime only through NATS or by starting processes.
ALLOWED = {
    "authoring": {"authoring", "core", "nats"},
    "core": {"authoring", "core", "nats"},
    "nats": {"core", "nats"},
    "control": {"authoring", "core", "nats", "control"},
    "local": {"authoring", "core", "nats", "control", "local"},
    "cli": {"authoring", "core", "nats", "control", "local", "cli", "runtime"},
    "runtime": {"authoring", "core", "nats", "runtime"},
}
# third-party package -> the modules allowed to import it: one per client (boto3's autoscaling
# and SSM clients have one owner each)
OWNERS = {"nats": {"wallaroo.nats.client"},
          "boto3": {"wallaroo_runtime.autoscale.aws", "wallaroo_runtime.ssm"},
          "aiobotocore": {"wallaroo_runtime.statestore"},
          "botocore": {"wallaroo_runtime.statestore", "wallaroo_runtime.ssm"},
          "aiohttp": {"wallaroo_runtime.connectors.sinks"},
          "prometheus_client": {"wallaroo_runtime.metrics"}}


def layer(module: str) -> str | None:
    """The layer of one of our modules; None for anything else (stdlib, third party)."""
    top = module.split(".")[0]
    if top == "wallaroo_runtime":
        return "runtime"
    if top != "wallaroo":
        return None
    if module in AUTHORING:
        return "authoring"
    if module in ("wallaroo.cli", "wallaroo.__main__"):
        return "cli"
    sub = module.split(".")[1]
    if sub in ("core", "nats", "control", "local"):
        return sub
    raise AssertionError(f"{module} is in no layer: add it to the map in this test and DESIGN.md")


def modules() -> dict[str, Path]:
    found = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> list[str]:
    """Every module `module` imports, resolved to absolute names (`from a import b` counts as
    `a.b` when that is a module of ours, else as `a`)."""
    ours = modules()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append(full if full in ours else base)
    return found


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def violations() -> list[str]:
    bad = []
    for module, path in sorted(modules().items()):
        mine = layer(module)
        assert mine is not None
        for imported in imports(module, path):
            theirs = layer(imported)
            if theirs is not None and theirs not in ALLOWED[mine]:
                bad.append(f"{module} ({mine}) imports {imported} ({theirs})")
            owners = OWNERS.get(imported.split(".")[0])
            if owners is not None and module not in owners:
                bad.append(f"{module} imports {imported}: only {' or '.join(sorted(owners))} may")
    return bad


def test_every_import_follows_the_layering_rule() -> None:
    assert violations() == []


def test_every_module_is_in_a_layer() -> None:
    layers = {layer(m) for m in modules()}
    assert layers == set(ALLOWED)


@pytest.mark.parametrize(("module", "imported", "allowed"), [
    ("wallaroo_runtime.runner", "wallaroo.control.apps", False),
    ("wallaroo_runtime.runner", "wallaroo.local.dev", False),
    ("wallaroo_runtime.runner", "wallaroo.cli", False),
    ("wallaroo.control.status", "wallaroo_runtime.cluster", False),
    ("wallaroo.local.devrun", "wallaroo_runtime.autoscale.loop", False),
    ("wallaroo.testing", "wallaroo.local.dev", False),
    ("wallaroo.core.worker", "wallaroo.control.apps", False),
    ("wallaroo.cli", "wallaroo_runtime.runner", True),
    ("wallaroo_runtime.runner", "wallaroo.core.worker", True),
    ("wallaroo_runtime.runner", "wallaroo.plan", True),
])
def test_the_rule_itself(module: str, imported: str, allowed: bool) -> None:
    """The checker would catch a violation: a rule that allowed everything would pass above."""
    assert (layer(imported) in ALLOWED[str(layer(module))]) is allowed
