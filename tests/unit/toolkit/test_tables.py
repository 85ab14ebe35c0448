"""wallaroo.control.tables: plain-text tables for status and listings."""

from wallaroo.control.tables import render_table


def test_columns_are_padded_to_the_widest_cell() -> None:
    table = render_table(["NAME", "N"], [["word_count", "8"], ["x", "12345"]])

    assert table.splitlines() == [
        "NAME        N",
        "----------  -----",
        "word_count  8",
        "x           12345",
    ]


def test_cells_are_converted_to_text_and_lines_have_no_trailing_spaces() -> None:
    table = render_table(["A", "LONG HEADER"], [[1, ""]])  # type: ignore[list-item]

    assert table.splitlines() == ["A  LONG HEADER", "-  -----------", "1"]


def test_no_rows_gives_header_and_rule() -> None:
    assert render_table(["APP"], []) == "APP\n---"
