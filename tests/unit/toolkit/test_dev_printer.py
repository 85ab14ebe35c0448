"""wallaroo dev's printer: one output per line, an encoder's newline kept and not doubled."""

from wallaroo.local.devsession import _lines


def test_outputs_become_lines_without_doubled_newlines() -> None:
    assert _lines([b"a", b"b\n", b"", "é".encode()], b"") == b"a\nb\n\n\xc3\xa9\n"


def test_each_line_names_its_sink_when_there_are_several() -> None:
    assert _lines([b"x\n", b"y"], b"counts: ") == b"counts: x\ncounts: y\n"
