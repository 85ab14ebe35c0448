"""Importing the authoring API (what an app module, its tests and wallaroo.testing do) does not
import the NATS client, nor the aiohttp it brings: a third of a second on every import."""

import json
import subprocess
import sys
from typing import Any


def test_import_wallaroo_does_not_import_the_nats_client() -> None:
    probe = ("import sys, wallaroo, wallaroo.testing; "
             "print(sorted(m for m in ('nats', 'aiohttp', 'wallaroo.nats.client') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def _imported(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = (f"import json, sys; {code}; "
             f"print(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(res.stdout))


def test_the_cli_starts_without_aiohttp() -> None:
    """nats-py imports aiohttp for websockets only, which wallaroo does not speak: 0.13 s of
    every command's start."""
    assert _imported("import wallaroo.cli, wallaroo.nats.client", ("aiohttp",)) == []


def test_aiohttp_still_imports_after_the_nats_client() -> None:
    """The S3 client and the HTTP sinks need it: the nats client hides it only while it
    imports nats-py."""
    assert _imported("import wallaroo.nats.client; import aiohttp; aiohttp.ClientSession",
                     ("aiohttp", "nats")) == ["aiohttp", "nats"]


def test_dev_without_tls_does_not_import_the_certificate_code() -> None:
    """cryptography's x509 (0.03 s) is for `dev --tls` only."""
    assert _imported("import wallaroo.cli, wallaroo.local.devrun",
                     ("wallaroo.local.tls", "cryptography.x509")) == []


def test_import_wallaroo_loads_only_what_is_used() -> None:
    """`python -m wallaroo` and the console script import the package first: its names load
    their modules on first use, so a command starts without the whole authoring API."""
    authoring = ("wallaroo.api", "wallaroo.pipeline", "wallaroo.plan", "wallaroo.windows",
                 "wallaroo.batches", "wallaroo.functions", "wallaroo.connectors", "wallaroo.core.engine")
    assert _imported("import wallaroo", authoring) == []
    assert _imported("import wallaroo; wallaroo.source", authoring) == [
        "wallaroo.api", "wallaroo.pipeline"]


def test_every_public_name_of_wallaroo_resolves() -> None:
    probe = ("import wallaroo; from wallaroo import *; "
             "print(all(getattr(wallaroo, n) is globals()[n] for n in wallaroo.__all__))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "True"


def test_the_cli_imports_a_command_s_modules_in_its_body() -> None:
    """Parsing any command (`dev` up to its nats-server's start) does not pay for every
    other command's modules: the NATS client, the wire types, the control clients, rich."""
    heavy = ("wallaroo.nats.client", "wallaroo.core.wire", "wallaroo.control.apps",
             "wallaroo.control.dlq", "wallaroo.core.calls", "rich.console", "asyncio")
    assert _imported("import wallaroo.cli", heavy) == []
    assert _imported("import wallaroo.control.dlq", ("rich.console",)) == []


def test_the_commands_annotations_are_evaluated_once_at_import() -> None:
    """typer reads every command's signature whenever any command runs: string annotations
    (`from __future__ import annotations`) made it compile and evaluate each one again on
    every start, twice the work."""
    from wallaroo import cli

    def callbacks(app: Any) -> list[Any]:
        found = [c.callback for c in app.registered_commands]
        found += [app.registered_callback.callback] if app.registered_callback else []
        return found + [cb for g in app.registered_groups for cb in callbacks(g.typer_instance)]

    strings = [f"{fn.__name__}: {name}" for fn in callbacks(cli.app)
               for name, hint in fn.__annotations__.items() if isinstance(hint, str)]
    assert len(callbacks(cli.app)) > 20 and strings == []


def test_dev_s_deploy_does_not_import_what_only_its_feed_or_scheduled_functions_need() -> None:
    """What `wallaroo dev` imports before its deploy: not the schedules (zoneinfo, calendar)
    an app of unscheduled functions never needs, nor the dead-letter previews and progress
    bar (rich) that only come after the deploy."""
    later = ("wallaroo.schedules", "wallaroo.control.dlq", "wallaroo.control.peek", "rich.console")
    assert _imported("import wallaroo.local.devsession", later) == []
