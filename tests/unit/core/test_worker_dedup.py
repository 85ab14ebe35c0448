"""The worker's watermark check: an upstream output already seen (re-published after the
dedup window, or a second copy inside one fetch) is recognised by its commit number."""

from types import SimpleNamespace

from wallaroo.core.worker import _seen_producer_seq


def msg(msg_id: str) -> SimpleNamespace:
    return SimpleNamespace(msg_id=msg_id)


def test_a_second_copy_in_the_same_fetch_is_seen() -> None:
    seen: dict[str, int] = {"s0.0": 4}
    assert not _seen_producer_seq(msg("s0.0:5:1"), seen)  # type: ignore[arg-type]
    assert _seen_producer_seq(msg("s0.0:5:1"), seen)  # type: ignore[arg-type]
    assert seen == {"s0.0": 5}


def test_an_older_commit_is_seen_and_ingress_ids_are_never() -> None:
    seen = {"s0.0": 9}
    assert _seen_producer_seq(msg("s0.0:3:0"), seen)  # type: ignore[arg-type]
    assert not _seen_producer_seq(msg("i:producer:3"), seen)  # type: ignore[arg-type]
    assert not _seen_producer_seq(msg("s1.2:1:0"), seen)  # type: ignore[arg-type]
