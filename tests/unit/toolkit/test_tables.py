"""wallaroo.control.tables: tables rendered by rich, previews with control characters escaped."""

from wallaroo.control.tables import preview, printable, render_table


def test_a_header_a_rule_and_a_line_per_row_with_columns_aligned() -> None:
    lines = render_table(["NAME", "N"], [["word_count", "8"], ["x", "12345"]]).splitlines()

    assert [line.split() for line in lines] == [["NAME", "N"], ["─" * len(lines[1])],
                                                ["word_count", "8"], ["x", "12345"]]
    assert lines[2].index("8") == lines[3].index("12345") == lines[0].rindex("N")
    assert all(line == line.rstrip() for line in lines)


def test_cells_are_text_never_rich_markup() -> None:
    """What a record or an error holds is shown as it is: "[red]" is no style, ":smile:"
    no emoji, "[default: x]" is not eaten."""
    table = render_table(["record"], [["[red]x[/red] :smile: [default: x]"], [3]])

    assert table.splitlines()[2:] == ["[red]x[/red] :smile: [default: x]", "3"]


def test_without_a_width_no_cell_is_wrapped_and_with_one_the_table_fits() -> None:
    long = "word " * 40
    piped = render_table(["a", "b"], [["x", long]])
    fitted = render_table(["a", "b"], [["x", long]], width=40)

    assert len(piped.splitlines()) == 3
    assert len(fitted.splitlines()) > 3 and max(map(len, fitted.splitlines())) <= 40


def test_no_rows_gives_header_and_rule() -> None:
    assert render_table(["APP"], []).splitlines() == ["APP", "───"]


def test_previews_escape_control_characters_and_cut_long_text() -> None:
    assert preview(b"bad\x1b[2J\r\n") == "bad\\x1b[2J\\r\\n"
    assert preview("x" * 50, 10) == "x" * 9 + "…"
    assert printable("a\x1b\nb\tc", keep="\n") == "a\\x1b\nb\\tc"
