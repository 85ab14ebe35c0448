"""Message id tags (Nats.id_tag): what a role's credentials make, nobody else can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wallaroo.local.auth import new_seed
from wallaroo.nats.client import Nats, _tag_key


class _NoServer:
    """Nats wraps a connection: id tags need none (they are made from the credentials)."""

    def jetstream(self, **_: Any) -> None:
        return None


def with_seed(path: Path) -> Nats:
    path.write_bytes(new_seed())
    return Nats(_NoServer(), _tag_key(str(path)))


def test_the_same_credentials_make_the_same_tag_every_time(tmp_path: Path) -> None:
    runner = with_seed(tmp_path / "runner.nk")
    again = Nats(_NoServer(), _tag_key(str(tmp_path / "runner.nk")))
    assert runner.id_tag("i:file-ab:0") == again.id_tag("i:file-ab:0") != ""
    assert runner.id_tag("i:file-ab:0") != runner.id_tag("i:file-ab:256")


def test_other_credentials_cannot_make_it(tmp_path: Path) -> None:
    runner, client = with_seed(tmp_path / "runner.nk"), with_seed(tmp_path / "client.nk")
    assert runner.id_tag("r:app:7") != client.id_tag("r:app:7")
    assert len(runner.id_tag("r:app:7")) == 20  # 80 bits: not guessed by publishing a few


def test_no_credentials_no_tag() -> None:
    assert Nats(_NoServer(), None).id_tag("i:file-ab:0") == ""
