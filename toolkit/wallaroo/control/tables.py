"""Tables for status and listings (rendered by rich), and one-line previews of what a record
or an error holds."""

from __future__ import annotations

import io
from collections.abc import Sequence


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                 width: int | None = None) -> str:
    """The table as plain text: a header line, a rule, a line per row. Cells are text, never
    rich markup (a dead letter's "[bold]" is shown as sent). Without a `width` (output to a
    pipe or file), no cell is wrapped: a line per row, however long."""
    # rich here, not at the top: dlq (which `wallaroo dev` imports) needs only `preview`,
    # and rich is 0.03 s of an import.
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    for name in header:
        table.add_column(Text(name), overflow="fold")
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    out = io.StringIO()
    console = Console(file=out, width=100_000, color_system=None, highlight=False, emoji=False)
    natural = Measurement.get(console, console.options, table).maximum
    console.width = min(width, natural) if width is not None else natural
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def preview(payload: bytes | str, width: int = 40) -> str:
    """One line of at most `width` characters. Control characters are escaped: a dead letter
    holds whatever bytes someone sent, and they must not drive the terminal."""
    text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
    text = printable(text[: width + 1])
    return text if len(text) <= width else text[: width - 1] + "…"


def printable(text: str, keep: str = "") -> str:
    """`text` with every control character (but those in `keep`) escaped as Python writes
    it in a str literal: `\\x1b`, `\\n`."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)
