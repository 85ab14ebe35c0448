"""The whole-output validator of the sequence-window app (tests/chaos/apps/sequence_window.py),
like Wallaroo's sequence-window validator.

Each key's values 1..N go in, in order; each output line "key:[v1,...,v4]" is the key's last
4 values after one record. Read per key, in output-stream order (the runtime keeps per-key
order), the windows must advance by exactly one value each: the window ending at v is the
one ending at v-1 shifted by one, i.e. the last 4 values up to v ("k:[1]", "k:[1,2]",
"k:[1,2,3]", "k:[1,2,3,4]", "k:[2,3,4,5]", ...), and the last window ends at N.

`validate` returns every violation, each naming its key, kind and the offending lines:
  gap        values never emitted (lost record or lost output)
  duplicate  a value emitted twice (re-run record or re-published output)
  reorder    a window ending below the key's previous window (a value emitted late)
  state      a window that is not the last 4 values up to its newest one (state lost or
             corrupted, or the record stream it saw had a gap, duplicate or reorder)
  tail       the key's last window does not end at N
  malformed, unknown key, missing key, unexpected value: output that is not windows of
             the expected keys and values at all
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

WIDTH = 4
LINE = re.compile(r"^(?P<key>[^:\[\]]+):\[(?P<values>\d+(?:,\d+)*)\]$")


@dataclass(frozen=True)
class Violation:
    kind: str
    key: str | None
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.key}): {self.detail}" if self.key else f"{self.kind}: {self.detail}"


def keys(k: int) -> list[str]:
    return [f"k{i:02d}" for i in range(k)]


def make_input(k: int, n: int) -> list[bytes]:
    """"key,value" records: values 1..n of each of k keys, interleaved round-robin."""
    return [f"{key},{v}".encode() for v in range(1, n + 1) for key in keys(k)]


def window(last: int, width: int = WIDTH) -> list[int]:
    """The window a key's state holds after values 1..last."""
    return list(range(max(1, last - width + 1), last + 1))


def render(key: str, values: list[int]) -> str:
    return f"{key}:[{','.join(map(str, values))}]"


def expected_output(k: int, n: int, width: int = WIDTH) -> list[str]:
    """A correct output for make_input(k, n) (one valid interleaving of the keys)."""
    return [render(key, window(v, width)) for v in range(1, n + 1) for key in keys(k)]


def validate(lines: Iterable[str], expected_keys: Iterable[str], n: int,
             width: int = WIDTH) -> list[Violation]:
    """Every violation in the whole output `lines` (in output-stream order)."""
    per_key: dict[str, list[tuple[int, list[int]]]] = {}
    found: list[Violation] = []
    for pos, line in enumerate(lines, start=1):
        m = LINE.match(line)
        if m is None:
            found.append(Violation("malformed", None, f"line #{pos} {line!r}"))
            continue
        per_key.setdefault(m["key"], []).append((pos, [int(v) for v in m["values"].split(",")]))
    wanted = list(expected_keys)
    for key in wanted:
        if key not in per_key:
            found.append(Violation("missing key", key, f"no window at all, expected 1..{n}"))
    for key in sorted(per_key.keys() - set(wanted)):
        found.append(Violation("unknown key", key, f"{len(per_key[key])} windows of a key never sent"))
    for key in wanted:
        if key in per_key:
            found += check_key(key, per_key[key], n, width)
    return found


def check_key(key: str, windows: list[tuple[int, list[int]]], n: int, width: int = WIDTH
              ) -> list[Violation]:
    """The violations in one key's windows, (output position, values) in output order."""
    found: list[Violation] = []
    seen: dict[int, int] = {}  # value -> position of its first window
    top, last, prev = 0, 0, "(none)"
    for pos, values in windows:
        v = values[-1]
        here = f"#{pos} {render(key, values)}"
        if v in seen:
            found.append(Violation("duplicate", key, f"{here} repeats {v}, first emitted at #{seen[v]}"))
        elif v < last:
            found.append(Violation("reorder", key, f"{here} comes after {prev}"))
        elif v > n:
            found.append(Violation("unexpected value", key, f"{here}: values only go up to {n}"))
        if values != window(v, width):
            found.append(Violation("state", key, f"{here} after {prev}: the window ending at {v} "
                                                 f"is {render(key, window(v, width))}"))
        seen.setdefault(v, pos)
        top, last, prev = max(top, v), v, here
    found += _gaps(key, seen, top, n)
    if last != n:
        never = f"; {_span(list(range(top + 1, n + 1)))} never emitted" if top < n else ""
        found.append(Violation("tail", key, f"the last window {prev} ends at {last}, not at {n}{never}"))
    return found


def _gaps(key: str, seen: dict[int, int], top: int, n: int) -> list[Violation]:
    """Runs of values below the key's highest that were never emitted."""
    missing = [v for v in range(1, min(top, n) + 1) if v not in seen]
    runs: list[list[int]] = []
    for v in missing:
        if runs and runs[-1][-1] == v - 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return [Violation("gap", key, f"{_span(r)} never emitted{_before(r[-1] + 1, seen)}") for r in runs]


def _before(v: int, seen: dict[int, int]) -> str:
    return f" (the next, {v}, at #{seen[v]})" if v in seen else ""


def _span(run: list[int]) -> str:
    return f"value {run[0]}" if len(run) == 1 else f"values {run[0]}..{run[-1]}"


def report(violations: list[Violation], limit: int = 20) -> str:
    """A readable summary: counts per kind, then the first `limit` violations."""
    counts: dict[str, int] = {}
    for v in violations:
        counts[v.kind] = counts.get(v.kind, 0) + 1
    head = ", ".join(f"{c} {kind}" for kind, c in sorted(counts.items()))
    lines = [f"{len(violations)} violation(s): {head}"] + [f"  {v}" for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"  ... and {len(violations) - limit} more")
    return "\n".join(lines)
