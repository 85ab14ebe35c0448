"""Schedules of serverless functions: when the cluster leader calls them, as in Modal.

    @app.function(schedule=wallaroo.Period(seconds=30))
    def poll() -> None: ...

    @app.function(schedule=wallaroo.Cron("0 9 * * MON-FRI", timezone="Europe/Paris"))
    def report() -> None: ...

The leader fires each tick once across the cluster, with a call id derived from the tick, so a
leader that takes over after a failover and fires the same tick again is deduplicated. This
module is therefore pure: no I/O, no clock reads (`now` is always passed in, UNIX seconds UTC),
and the same inputs always give the same ticks. A leader's loop is:

    ticks = schedule.due(last_fired, now)       # [] or [the tick to fire now]
    ...fire each with derived_call_id(function, tick), record it as last_fired...
    sleep(schedule.next_after(now) - now)

Ticks. A Period's ticks are aligned to the UNIX epoch: tick n fires at n * length (so
Period(days=1) fires at midnight UTC, whatever the deploy time). A Cron's tick is the UTC minute
it fires in, `unix_seconds // 60`.

Missed ticks. `due` fires at most the latest tick at or before `now`: ticks missed while the
cluster was down are not replayed (as Modal, and Kubernetes CronJobs with a deadline, do). A
schedule that has never fired (`last_fired` None, e.g. freshly deployed) fires its latest tick
only if that tick is under FIRST_FIRE_GRACE (one minute) old: a leader that comes up a few
seconds after a tick still fires it, a daily job deployed at noon waits for next midnight. For
periods under a minute this means "fire now": the latest tick is always less than a period old.

Cron syntax is crontab(5)'s five fields, minute hour day-of-month month day-of-week, with `*`,
numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`, names JAN-DEC and SUN-SAT (any
case), day-of-week 7 as Sunday like 0, and the macros @hourly @daily @midnight @weekly @monthly
@yearly @annually. As in crontab(5), when both day fields are restricted (neither starts with
`*`) a day matches if EITHER does: `0 0 13 * FRI` fires on every 13th and every Friday. If one
starts with `*` (`*/2` included), a day must match both.

Time zones. Cron fields are matched against wall-clock time in the Cron's timezone. A wall-clock
time that does not exist (spring forward: 02:30 in New York on the DST day) is skipped, not
moved; an ambiguous one (fall back: 01:30 happens twice) fires once, at its first occurrence.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from wallaroo.core.errors import DefinitionError

FIRST_FIRE_GRACE = 60.0  # seconds; see "Missed ticks" in the module docstring
# Cron searches give up after one 400-year Gregorian cycle: the calendar repeats after it, so a
# spec that can fire at all fires within it (the rarest, Feb 29 on a given weekday, can wait 40
# years). Field skipping keeps it cheap: such a spec only visits February days.
_SEARCH_DAYS = 146_097
_EXAMPLE_CRON = 'Cron("*/5 * * * *")'
_EXAMPLE_PERIOD = "Period(seconds=30)"


class ScheduleError(DefinitionError):
    """A schedule was written wrongly. `schedule` is how it was given, `field` the cron field at
    fault ("minute", ..., "day-of-week"; "" when it is not one field)."""

    def __init__(self, problem: str, *, schedule: str, field: str = "") -> None:
        self.schedule, self.field = schedule, field
        super().__init__(f"{schedule}: {problem}")


class Schedule(ABC):
    """When a function fires: a sequence of ticks, each an integer id with a fire time."""

    @abstractmethod
    def tick_at(self, now: float) -> int | None:
        """The most recent tick at or before `now`; None if none within the search bound."""

    @abstractmethod
    def fire_time(self, tick: int) -> float:
        """When `tick` fires, in UNIX seconds."""

    @abstractmethod
    def next_after(self, now: float) -> float:
        """The first fire time strictly after `now`, in UNIX seconds (the leader sleeps until
        then)."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description for status tables: "every 30s", "cron */5 * * * * UTC"."""

    def due(self, last_fired: int | None, now: float) -> list[int]:
        """The ticks to fire at `now`, given the last tick the cluster fired: [] or the latest
        tick at or before `now`. Never an older tick than `last_fired` (a leader whose clock lags
        the previous one's fires nothing), never older missed ticks; when `last_fired` is None
        only a tick under FIRST_FIRE_GRACE seconds old.

        >>> Period(minutes=1).due(None, 120.5), Period(minutes=1).due(2, 130.0)
        ([2], [])
        """
        tick = self.tick_at(now)
        if tick is None or (last_fired is not None and tick <= last_fired):
            return []
        if last_fired is None and now - self.fire_time(tick) >= FIRST_FIRE_GRACE:
            return []
        return [tick]


@dataclass(frozen=True)
class Period(Schedule):
    """Fires every fixed length, on ticks aligned to the UNIX epoch (tick n at n * length).
    The fields add up; the length is resolved to whole milliseconds and must be at least 1 ms.

    >>> Period(seconds=30).next_after(1_000_000_000.0)
    1000000020.0
    """

    days: float = 0
    hours: float = 0
    minutes: float = 0
    seconds: float = 0
    milliseconds: float = 0

    def __post_init__(self) -> None:
        parts = (self.days, self.hours, self.minutes, self.seconds, self.milliseconds)
        if not all(math.isfinite(p) and p >= 0 for p in parts):
            problem = f"its fields must be finite and not negative, e.g. {_EXAMPLE_PERIOD}"
            raise ScheduleError(problem, schedule=repr(self))
        if self._length_ms < 1:
            problem = f"needs a positive length (at least 1 ms), e.g. {_EXAMPLE_PERIOD}"
            raise ScheduleError(problem, schedule=repr(self))

    @property
    def _length_ms(self) -> int:
        ms = (((self.days * 24 + self.hours) * 60 + self.minutes) * 60 + self.seconds) * 1000
        return round(ms + self.milliseconds)

    @property
    def length(self) -> timedelta:
        """The time between two ticks."""
        return timedelta(milliseconds=self._length_ms)

    def fire_time(self, tick: int) -> float:
        # Integer product, one rounding: fire times are exact multiples and strictly increase.
        return tick * self._length_ms / 1000

    def tick_at(self, now: float) -> int:
        # The float estimate can be off by one next to a tick; settle it on fire_time itself so
        # that tick_at(fire_time(n)) == n always holds.
        tick = math.floor(now * 1000 / self._length_ms)
        while self.fire_time(tick + 1) <= now:
            tick += 1
        while self.fire_time(tick) > now:
            tick -= 1
        return tick

    def next_after(self, now: float) -> float:
        return self.fire_time(self.tick_at(now) + 1)

    def describe(self) -> str:
        ms, parts = self._length_ms, []
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            count, ms = divmod(ms, size)
            parts += [f"{count}{unit}"] if count else []
        parts += [f"{ms}ms"] if ms else []
        return "every " + "".join(parts)


@dataclass(frozen=True)
class _Field:
    """How one of the five cron fields is read."""

    name: str
    low: int
    high: int
    example: str  # a whole spec showing the field used well
    names: Mapping[str, int] = field(default_factory=dict)

    @property
    def accepts(self) -> str:
        if not self.names:
            return "a number"
        first, *_, last = self.names
        return f"a number or a name {first}-{last}"


_MONTH_NAMES = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAY_NAMES = {d: i for i, d in enumerate("SUN MON TUE WED THU FRI SAT".split())}
_FIELDS = (
    _Field("minute", 0, 59, "*/5 * * * *"),
    _Field("hour", 0, 23, "0 9-17 * * *"),
    _Field("day-of-month", 1, 31, "0 0 1,15 * *"),
    _Field("month", 1, 12, "0 0 1 JAN-MAR *", _MONTH_NAMES),
    _Field("day-of-week", 0, 7, "0 9 * * MON-FRI", _DAY_NAMES),
)
_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


@dataclass(frozen=True)
class _CronFields:
    """A parsed spec: the values each field allows (day-of-week 0-6, Sunday 0)."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    either_day: bool  # both day fields restricted: a day matches if either matches


def _field_error(spec: str, fld: _Field, value: str, problem: str) -> ScheduleError:
    message = (f"the {fld.name} field {value!r} {problem}. Example of a valid {fld.name}: "
               f'Cron("{fld.example}")')
    return ScheduleError(message, schedule=f"Cron({spec!r})", field=fld.name)


def _number(text: str, spec: str, fld: _Field, item: str) -> int:
    value = fld.names.get(text.upper())
    if value is None and text.isascii() and text.isdigit():
        value = int(text)
    if value is None and text == item:
        raise _field_error(spec, fld, item, f"is not {fld.accepts}")
    if value is None:
        where = f"has {text!r} where it needs" if text else "lacks"
        raise _field_error(spec, fld, item, f"{where} {fld.accepts}")
    if not fld.low <= value <= fld.high:
        raise _field_error(spec, fld, item, f"is outside {fld.low}-{fld.high}")
    return value


def _parse_item(item: str, spec: str, fld: _Field) -> range:
    """One comma-separated part of a field: `*`, `n`, `a-b`, `*/s` or `a-b/s`."""
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not (step_text.isascii() and step_text.isdigit() and int(step_text) > 0):
            raise _field_error(spec, fld, item, "needs a positive whole step after '/'")
        step = int(step_text)
    if base == "*":
        return range(fld.low, fld.high + 1, step)
    first, dash, last = base.partition("-")
    low = _number(first, spec, fld, item)
    high = _number(last, spec, fld, item) if dash else low
    if slash and not dash:
        raise _field_error(spec, fld, item, f"steps a single value; write '{low}-{fld.high}/{step}'")
    if low > high:
        raise _field_error(spec, fld, item, f"runs backwards; write '{low}-{fld.high},{fld.low}-{high}'")
    return range(low, high + 1, step)


def _parse_field(text: str, spec: str, fld: _Field) -> frozenset[int]:
    if "" in text.split(","):
        raise _field_error(spec, fld, text, "has an empty item (a stray comma)")
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, spec, fld))
    return frozenset(values)


def _expand(spec: str) -> str:
    """The five fields a macro stands for; any other spec as it is."""
    word = spec.strip().lower()
    if not word.startswith("@"):
        return spec
    if word not in _MACROS:
        problem = f"unknown macro; use one of {', '.join(_MACROS)} or five fields, e.g. {_EXAMPLE_CRON}"
        raise ScheduleError(problem, schedule=f"Cron({spec!r})")
    return _MACROS[word]


def _parse(spec: str, expanded: str) -> _CronFields:
    texts = expanded.split()
    if len(texts) != 5:
        problem = (f"has {len(texts)} fields where cron needs 5 (minute hour day-of-month month "
                   f"day-of-week), e.g. {_EXAMPLE_CRON}")
        raise ScheduleError(problem, schedule=f"Cron({spec!r})")
    minutes, hours, days, months, weekdays = (
        _parse_field(text, spec, fld) for text, fld in zip(texts, _FIELDS, strict=True))
    return _CronFields(
        minutes=tuple(sorted(minutes)), hours=tuple(sorted(hours)), days=days, months=months,
        weekdays=frozenset(d % 7 for d in weekdays),  # 7 is Sunday too
        either_day=not texts[2].startswith("*") and not texts[4].startswith("*"))


def _check_fires(spec: str, expanded: str, fields: _CronFields) -> None:
    """Reject a spec no date satisfies. With `either_day` any weekday is some day of every
    month; otherwise a (month, day) pair that exists (Feb 29 does) meets every weekday in time."""
    if fields.either_day or any(d <= _LONGEST_MONTH[m] for m in fields.months for d in fields.days):
        return
    days, months = expanded.split()[2:4]
    problem = (f"never fires: day-of-month {days!r} never falls in month {months!r}; pick days "
               f'that exist, e.g. Cron("0 0 28 2 *")')
    raise ScheduleError(problem, schedule=f"Cron({spec!r})", field="day-of-month")


def _load_zone(spec: str, timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problem = "unknown timezone; use an IANA name such as 'UTC' or 'America/New_York'"
        raise ScheduleError(problem, schedule=f"Cron({spec!r}, timezone={timezone!r})") from None


@dataclass(frozen=True)
class Cron(Schedule):
    """Fires on the minutes a five-field cron spec matches, on wall-clock time in `timezone`
    (an IANA name). See the module docstring for the syntax, the day-field rule and DST.

    >>> Cron("*/5 * * * *").next_after(1_000_000_000.0) - 1_000_000_000.0
    200.0
    """

    spec: str
    timezone: str = "UTC"
    _fields: _CronFields = field(init=False, repr=False, compare=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not isinstance(self.timezone, str):
            problem = f"spec and timezone must be strings, e.g. {_EXAMPLE_CRON}"
            raise ScheduleError(problem, schedule=f"Cron({self.spec!r}, timezone={self.timezone!r})")
        expanded = _expand(self.spec)
        fields = _parse(self.spec, expanded)
        _check_fires(self.spec, expanded, fields)
        # Frozen: the parsed form is set once here, the only place that may.
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_zone", _load_zone(self.spec, self.timezone))

    def matches(self, when: datetime) -> bool:
        """Whether the fields match `when` (an aware datetime) read as wall-clock time in this
        Cron's timezone. Says nothing of DST: see `tick_at` for what actually fires."""
        local = when.astimezone(self._zone)
        f = self._fields
        return (local.minute in f.minutes and local.hour in f.hours and local.month in f.months
                and self._day_matches(local.date()))

    def fire_time(self, tick: int) -> float:
        return tick * 60.0

    def tick_at(self, now: float) -> int | None:
        start = datetime.fromtimestamp(now, self._zone)
        # Wall-clock minutes at or before now's are at or before now even in a repeated hour,
        # since the first occurrence is the one that fires.
        for local in self._wall_minutes(start, forward=False):
            fired = _first_occurrence(local)
            if fired is not None and fired <= now:
                return math.floor(fired) // 60
        return None

    def next_after(self, now: float) -> float:
        start = datetime.fromtimestamp(now, self._zone)
        for local in self._wall_minutes(start, forward=True):
            fired = _first_occurrence(local)
            # In the second pass of a repeated hour, the next wall-clock minutes already fired
            # an hour ago: skip them until after now.
            if fired is not None and fired > now:
                return fired
        message = f"Cron({self.spec!r}) has no fire time within 400 years after {now}"
        raise ValueError(message)

    def describe(self) -> str:
        return f"cron {' '.join(self.spec.split())} {self.timezone}"

    def _day_matches(self, day: date) -> bool:
        f = self._fields
        in_days, in_weekdays = day.day in f.days, day.isoweekday() % 7 in f.weekdays
        return (in_days or in_weekdays) if f.either_day else (in_days and in_weekdays)

    def _wall_minutes(self, start: datetime, forward: bool) -> Iterator[datetime]:
        """The wall-clock minutes the fields match, from `start`'s minute (included) onwards or
        backwards, as aware datetimes in the zone with fold=0 (first occurrence)."""
        f = self._fields
        for day in self._days(start.date(), forward):
            first_day = day == start.date()
            for hour in _ordered(f.hours, forward, start.hour if first_day else None):
                first_hour = first_day and hour == start.hour
                for minute in _ordered(f.minutes, forward, start.minute if first_hour else None):
                    yield datetime(day.year, day.month, day.day, hour, minute, tzinfo=self._zone)

    def _days(self, start: date, forward: bool) -> Iterator[date]:
        """The days that match, from `start` on (or back), skipping whole months not allowed."""
        step, day = timedelta(days=1 if forward else -1), start
        try:
            end = start + step * _SEARCH_DAYS
            while day <= end if forward else day >= end:
                if day.month not in self._fields.months:
                    day = _next_month(day) if forward else day.replace(day=1) - timedelta(days=1)
                    continue
                if self._day_matches(day):
                    yield day
                day += step
        except OverflowError:  # the search ran off the calendar (year 1 or 9999): no match
            return


def _ordered(values: tuple[int, ...], forward: bool, bound: int | None) -> Iterable[int]:
    """`values` (sorted) in search order, from `bound` (included) on if given."""
    if forward:
        return [v for v in values if bound is None or v >= bound]
    return [v for v in reversed(values) if bound is None or v <= bound]


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _first_occurrence(local: datetime) -> float | None:
    """When a wall-clock time (fold=0) first happens, in UNIX seconds; None if it never does
    (a spring-forward gap: there fold=0 maps to a time whose wall clock reads differently)."""
    fired = local.timestamp()
    back = datetime.fromtimestamp(fired, local.tzinfo)
    if (back.day, back.hour, back.minute) != (local.day, local.hour, local.minute):
        return None
    return fired


def as_schedule(value: object) -> Schedule:
    """Check what was passed as `schedule=`: a Schedule passes, a common mistake raises a
    ScheduleError that says the fix."""
    if isinstance(value, Schedule):
        return value
    if value is Period or value is Cron:
        fix = f"Did you forget the parentheses? Suggestion: {_EXAMPLE_PERIOD} or {_EXAMPLE_CRON}"
    elif isinstance(value, str):
        fix = f"a cron spec goes in Cron: Cron({value!r})"
    elif isinstance(value, int | float | timedelta):
        fix = f"a length goes in Period, e.g. {_EXAMPLE_PERIOD}"
    else:
        fix = f"use {_EXAMPLE_PERIOD} or {_EXAMPLE_CRON}"
    problem = f"is not a schedule; {fix}"
    raise ScheduleError(problem, schedule=f"schedule={value!r}")
