"""Schedules (wallaroo.schedules): pure tick arithmetic, checked against hand-worked dates and a
brute-force minute-by-minute reference. No clock is read: every `now` is a fixed timestamp."""

from __future__ import annotations

import doctest
import math
import pickle
import random
from calendar import monthrange
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from wallaroo import schedules
from wallaroo.core.errors import DefinitionError
from wallaroo.schedules import Cron, Period, Schedule, ScheduleError, as_schedule

NEW_YORK = ZoneInfo("America/New_York")


def utc(*fields: int) -> float:
    """UNIX seconds of a UTC date: utc(2024, 2, 29, 12, 30)."""
    year, month, day, *rest = fields
    return datetime(year, month, day, *rest, tzinfo=UTC).timestamp()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


# Period


def test_period_ticks_are_aligned_to_the_epoch() -> None:
    p = Period(seconds=30)
    assert [p.tick_at(t) for t in (0.0, 29.999, 30.0, 59.0, 60.0, -0.5)] == [0, 0, 1, 1, 2, -1]
    assert p.fire_time(3) == 90.0
    day = Period(days=1)
    assert day.fire_time(day.tick_at(utc(2024, 5, 5, 15, 7))) == utc(2024, 5, 5)  # midnight UTC


def test_period_fields_add_up() -> None:
    assert Period(hours=1, minutes=30).length == timedelta(minutes=90)
    assert Period(seconds=1, milliseconds=500).length == timedelta(milliseconds=1500)
    now = utc(2024, 1, 1, 0, 5)
    assert Period(minutes=1).tick_at(now) == Period(seconds=60).tick_at(now)


def test_period_next_after_is_strictly_after() -> None:
    p = Period(seconds=30)
    assert p.next_after(30.0) == 60.0
    assert p.next_after(59.999) == 60.0
    assert p.next_after(-1.0) == 0.0


@pytest.mark.parametrize("period", [Period(milliseconds=100), Period(milliseconds=300), Period(seconds=0.7),
                                    Period(minutes=7)])
def test_period_ticks_agree_with_fire_times_to_the_last_bit(period: Period) -> None:
    """Float rounding next to a tick must not move it: this is what keeps tick ids stable."""
    base = period.tick_at(utc(2024, 6, 1))
    for tick in range(base, base + 500):
        fired = period.fire_time(tick)
        assert period.tick_at(fired) == tick
        assert period.tick_at(math.nextafter(fired, -math.inf)) == tick - 1
        assert period.next_after(fired) == period.fire_time(tick + 1)


@pytest.mark.parametrize(("length_ms", "tick"), [(616, 7_009_150_998), (949, 5_696_026_863)])
def test_period_tick_at_corrects_a_float_estimate_off_by_one(length_ms: int, tick: int) -> None:
    """Ticks where now * 1000 / length lands just under (616) or on (949, for the float just
    below the fire time) the wrong side of an integer: found by a random search."""
    period = Period(milliseconds=length_ms)
    assert period.tick_at(period.fire_time(tick)) == tick
    assert period.tick_at(math.nextafter(period.fire_time(tick), -math.inf)) == tick - 1


@pytest.mark.parametrize(("period", "text"), [
    (Period(seconds=30), "every 30s"),
    (Period(minutes=90), "every 1h30m"),
    (Period(hours=24), "every 1d"),
    (Period(milliseconds=1500), "every 1s500ms"),
])
def test_period_describe(period: Period, text: str) -> None:
    assert period.describe() == text


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({}, "needs a positive length"),
    ({"seconds": 0}, "needs a positive length"),
    ({"milliseconds": 0.4}, "at least 1 ms"),
    ({"minutes": -5}, "not negative"),
    ({"seconds": math.nan}, "finite"),
    ({"seconds": math.inf}, "finite"),
])
def test_period_rejects_a_length_that_is_not_positive(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(DefinitionError, match=fragment) as caught:
        Period(**kwargs)
    assert "Period(seconds=30)" in str(caught.value)  # the fix, spelled out


# Cron parsing, seen through matches()


@pytest.mark.parametrize(("spec", "when", "expected"), [
    ("*/15 * * * *", datetime(2024, 1, 1, 10, 45, tzinfo=UTC), True),
    ("*/15 * * * *", datetime(2024, 1, 1, 10, 50, tzinfo=UTC), False),
    ("10-20/5 * * * *", datetime(2024, 1, 1, 10, 15, tzinfo=UTC), True),
    ("10-20/5 * * * *", datetime(2024, 1, 1, 10, 12, tzinfo=UTC), False),
    ("10-20/5 * * * *", datetime(2024, 1, 1, 10, 25, tzinfo=UTC), False),
    ("0,30-31 * * * *", datetime(2024, 1, 1, 10, 31, tzinfo=UTC), True),
    ("0,30-31 * * * *", datetime(2024, 1, 1, 10, 29, tzinfo=UTC), False),
    ("0 9,17 * * *", datetime(2024, 1, 1, 17, 0, tzinfo=UTC), True),
    ("0 9,17 * * *", datetime(2024, 1, 1, 12, 0, tzinfo=UTC), False),
    ("0 0 * jan-Mar *", datetime(2024, 2, 10, tzinfo=UTC), True),
    ("0 0 * jan-Mar *", datetime(2024, 4, 10, tzinfo=UTC), False),
    ("0 0 * * Mon-FRI", datetime(2024, 1, 1, tzinfo=UTC), True),  # a Monday
    ("0 0 * * Mon-FRI", datetime(2024, 1, 6, tzinfo=UTC), False),  # a Saturday
    ("0 0 * * 7", datetime(2024, 1, 7, tzinfo=UTC), True),  # a Sunday
    ("0 0 * * 0", datetime(2024, 1, 7, tzinfo=UTC), True),
    ("0 0 * * sun", datetime(2024, 1, 7, tzinfo=UTC), True),
    ("0 0 * * 5-7", datetime(2024, 1, 7, tzinfo=UTC), True),
    ("0 0 * * 5-7", datetime(2024, 1, 4, tzinfo=UTC), False),  # a Thursday
    ("0 9 * * *", datetime(2024, 7, 1, 13, 0, tzinfo=UTC), False),  # UTC unless told otherwise
])
def test_cron_fields(spec: str, when: datetime, expected: bool) -> None:
    assert Cron(spec).matches(when) is expected


@pytest.mark.parametrize(("spec", "day", "expected"), [
    # Both day fields restricted: either one matching is enough (crontab(5)).
    ("0 0 13 * FRI", datetime(2024, 9, 13, tzinfo=UTC), True),  # Friday the 13th
    ("0 0 13 * FRI", datetime(2024, 1, 13, tzinfo=UTC), True),  # a Saturday, but the 13th
    ("0 0 13 * FRI", datetime(2024, 1, 5, tzinfo=UTC), True),  # a Friday, not the 13th
    ("0 0 13 * FRI", datetime(2024, 1, 6, tzinfo=UTC), False),
    # A day field starting with * is not restricted: then both must match.
    ("0 0 */2 * MON", datetime(2024, 1, 1, tzinfo=UTC), True),  # Monday the 1st
    ("0 0 */2 * MON", datetime(2024, 1, 8, tzinfo=UTC), False),  # Monday the 8th
    ("0 0 */2 * MON", datetime(2024, 1, 3, tzinfo=UTC), False),  # Wednesday the 3rd
    ("0 0 * * MON", datetime(2024, 1, 2, tzinfo=UTC), False),
])
def test_cron_day_of_month_or_day_of_week(spec: str, day: datetime, expected: bool) -> None:
    assert Cron(spec).matches(day) is expected


def test_a_restricted_day_of_week_rescues_an_impossible_day_of_month() -> None:
    feb_30_or_monday = Cron("0 0 30 2 MON")  # OR rule: every Monday in February
    fired = datetime.fromtimestamp(feb_30_or_monday.next_after(utc(2024, 1, 1)), UTC)
    assert fired == datetime(2024, 2, 5, tzinfo=UTC)


@pytest.mark.parametrize(("macro", "spec"), [
    ("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"), ("@monthly", "0 0 1 * *"), ("@yearly", "0 0 1 1 *"),
    ("@Annually", "0 0 1 1 *"),
])
def test_cron_macros(macro: str, spec: str) -> None:
    now = utc(2024, 5, 17, 10, 20)
    assert Cron(macro).next_after(now) == Cron(spec).next_after(now)
    assert Cron(macro).tick_at(now) == Cron(spec).tick_at(now)


@pytest.mark.parametrize(("spec", "field", "fragment"), [
    ("61 * * * *", "minute", "'61' is outside 0-59"),
    ("* 24 * * *", "hour", "'24' is outside 0-23"),
    ("* * 0 * *", "day-of-month", "'0' is outside 1-31"),
    ("* * * 13 *", "month", "'13' is outside 1-12"),
    ("* * * * 8", "day-of-week", "'8' is outside 0-7"),
    ("* * * FOO *", "month", "'FOO' is not a number or a name JAN-DEC"),
    ("* * * * MONDAY", "day-of-week", "a name SUN-SAT"),
    ("* * * * mon-fry", "day-of-week", "has 'fry' where it needs"),
    ("*/0 * * * *", "minute", "positive whole step"),
    ("*/x * * * *", "minute", "positive whole step"),
    ("5/10 * * * *", "minute", "write '5-59/10'"),
    ("* 22-2 * * *", "hour", "runs backwards; write '22-23,0-2'"),
    ("1,,2 * * * *", "minute", "empty item"),
    ("-5 * * * *", "minute", "lacks a number"),
    ("0 0 30 2 *", "day-of-month", "never fires"),
    ("0 0 31 4,6,9,11 *", "day-of-month", "never fires"),
    ("* * * *", "", "has 4 fields where cron needs 5"),
    ("* * * * * *", "", "has 6 fields"),
    ("", "", "has 0 fields"),
    ("@reboot", "", "unknown macro"),
])
def test_cron_rejects_a_bad_spec_naming_the_field_and_a_fix(spec: str, field: str, fragment: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        Cron(spec)
    error = caught.value
    assert isinstance(error, ScheduleError)
    assert error.field == field
    assert fragment in str(error)
    assert f"Cron({spec!r})" in str(error)  # names what was given
    assert 'Cron("' in str(error)  # and shows a valid one


@pytest.mark.parametrize("timezone", ["Mars/Olympus_Mons", "", "../etc/passwd"])
def test_cron_rejects_an_unknown_timezone(timezone: str) -> None:
    with pytest.raises(DefinitionError, match="unknown timezone.*America/New_York"):
        Cron("* * * * *", timezone=timezone)


def test_cron_is_a_frozen_value() -> None:
    cron = Cron("*/5 * * * *", timezone="Europe/Paris")
    assert cron == Cron("*/5 * * * *", timezone="Europe/Paris") != Cron("*/5 * * * *")
    assert hash(cron) == hash(Cron("*/5 * * * *", timezone="Europe/Paris"))
    copy = pickle.loads(pickle.dumps(cron))
    assert copy.next_after(utc(2024, 1, 1)) == cron.next_after(utc(2024, 1, 1))
    with pytest.raises(FrozenInstanceError):
        cron.spec = "* * * * *"  # type: ignore[misc]


@pytest.mark.parametrize(("cron", "text"), [
    (Cron("*/5  *  * * *"), "cron */5 * * * * UTC"),
    (Cron("@daily", "Europe/Paris"), "cron @daily Europe/Paris"),
])
def test_cron_describe(cron: Cron, text: str) -> None:
    assert cron.describe() == text


# Cron search across months, years and leap days


@pytest.mark.parametrize(("spec", "now", "expected"), [
    ("0 0 1 * *", utc(2023, 1, 31, 12), "2023-02-01 00:00:00"),
    ("0 0 31 * *", utc(2023, 4, 1), "2023-05-31 00:00:00"),
    ("0 12 * * *", utc(2023, 12, 31, 13), "2024-01-01 12:00:00"),
    ("59 23 31 12 *", utc(2023, 12, 31, 23, 59), "2024-12-31 23:59:00"),  # strictly after
    ("0 0 29 2 *", utc(2023, 3, 1), "2024-02-29 00:00:00"),
    ("0 0 29 2 *", utc(2024, 2, 29), "2028-02-29 00:00:00"),
    ("0 0 29 2 *", utc(2096, 3, 1), "2104-02-29 00:00:00"),  # 2100 is not a leap year
    ("0 0 29 2 */7", utc(2005, 1, 1), "2032-02-29 00:00:00"),  # Feb 29 AND a Sunday: 27 years
    ("*/5 * * * *", utc(2024, 1, 1, 10, 2, 30), "2024-01-01 10:05:00"),
])
def test_cron_next_after(spec: str, now: float, expected: str) -> None:
    assert iso(Cron(spec).next_after(now)) == expected


@pytest.mark.parametrize(("spec", "now", "expected"), [
    ("0 0 1 1 *", utc(2024, 6, 1), "2024-01-01 00:00:00"),
    ("0 0 1 1 *", utc(2024, 1, 1), "2024-01-01 00:00:00"),  # at the tick itself
    ("0 0 1 1 *", utc(2024, 1, 1) - 0.001, "2023-01-01 00:00:00"),
    ("0 0 29 2 *", utc(2027, 6, 1), "2024-02-29 00:00:00"),
    ("0 0 29 2 */7", utc(2031, 1, 1), "2004-02-29 00:00:00"),
    ("*/5 * * * *", utc(2024, 1, 1, 10, 4, 59), "2024-01-01 10:00:00"),
])
def test_cron_tick_at(spec: str, now: float, expected: str) -> None:
    cron = Cron(spec)
    tick = cron.tick_at(now)
    assert tick is not None
    assert iso(cron.fire_time(tick)) == expected
    assert tick == cron.fire_time(tick) // 60  # the tick is the UTC minute


# Time zones and DST (America/New_York: spring forward 2024-03-10 02:00, fall back 2024-11-03 02:00)


def test_a_wall_clock_time_that_does_not_exist_is_skipped() -> None:
    cron = Cron("30 2 * * *", "America/New_York")
    assert iso(cron.next_after(utc(2024, 3, 9, 12))) == "2024-03-11 06:30:00"  # 02:30 EDT
    tick = cron.tick_at(utc(2024, 3, 10, 12))
    assert tick is not None and iso(cron.fire_time(tick)) == "2024-03-09 07:30:00"  # 02:30 EST


def test_an_every_quarter_hour_schedule_runs_straight_through_spring_forward() -> None:
    cron = Cron("*/15 * * * *", "America/New_York")
    assert iso(cron.next_after(utc(2024, 3, 10, 6, 45))) == "2024-03-10 07:00:00"  # 01:45 EST -> 03:00 EDT


def test_an_ambiguous_wall_clock_time_fires_once_at_its_first_occurrence() -> None:
    cron = Cron("30 1 * * *", "America/New_York")
    first = cron.next_after(utc(2024, 11, 3))
    assert iso(first) == "2024-11-03 05:30:00"  # 01:30 EDT
    assert iso(cron.next_after(first)) == "2024-11-04 06:30:00"  # not 06:30 (01:30 EST) that day
    during_repeat = utc(2024, 11, 3, 6, 45)  # 01:45 EST, the second 01:45
    assert cron.due(cron.tick_at(first), during_repeat) == []


def test_cron_fields_follow_local_wall_clock_time() -> None:
    cron = Cron("0 9 * * *", "America/New_York")
    assert iso(cron.next_after(utc(2024, 11, 1))) == "2024-11-01 13:00:00"  # 09:00 EDT
    assert iso(cron.next_after(utc(2024, 11, 4))) == "2024-11-04 14:00:00"  # 09:00 EST
    assert cron.matches(datetime(2024, 11, 4, 14, tzinfo=UTC))
    kolkata = Cron("0 0 * * *", "Asia/Kolkata")  # UTC+05:30
    assert iso(kolkata.next_after(utc(2024, 1, 1))) == "2024-01-01 18:30:00"


# due()


def test_due_fires_the_latest_tick_once() -> None:
    cron = Cron("*/5 * * * *")
    now = utc(2024, 1, 1, 10, 5, 20)
    [tick] = cron.due(cron.tick_at(utc(2024, 1, 1, 10, 0)), now)
    assert iso(cron.fire_time(tick)) == "2024-01-01 10:05:00"
    assert cron.due(tick, now) == []
    assert cron.due(tick, utc(2024, 1, 1, 10, 9, 59)) == []


def test_due_replays_only_the_latest_missed_tick() -> None:
    cron = Cron("*/5 * * * *")
    last = cron.tick_at(utc(2024, 1, 1, 10, 0))
    assert cron.due(last, utc(2024, 1, 1, 10, 27)) == [cron.tick_at(utc(2024, 1, 1, 10, 25))]
    daily = Cron("@daily")  # down for a week: it runs once, for today's midnight, however late
    assert daily.due(daily.tick_at(utc(2024, 1, 1)), utc(2024, 1, 8, 15)) == [daily.tick_at(utc(2024, 1, 8))]


def test_due_never_goes_back_to_a_tick_older_than_the_last_fired() -> None:
    period = Period(seconds=30)
    assert period.due(period.tick_at(100.0) + 1, 100.0) == []  # this leader's clock lags


@pytest.mark.parametrize(("schedule", "now", "fires"), [
    (Cron("@daily"), utc(2024, 1, 1, 0, 0, 30), True),  # deployed just after midnight
    (Cron("@daily"), utc(2024, 1, 1, 0, 1), False),  # a minute late is too late
    (Cron("@daily"), utc(2024, 1, 1, 12), False),  # a deploy at noon waits for midnight
    (Period(hours=1), utc(2024, 1, 1, 10, 0, 59) + 0.5, True),
    (Period(hours=1), utc(2024, 1, 1, 10, 1), False),
    (Period(seconds=30), 29.99, True),  # under a minute: the latest tick is always recent
])
def test_a_schedule_that_never_fired_fires_only_a_recent_tick(schedule: Schedule, now: float,
                                                              fires: bool) -> None:
    assert schedule.due(None, now) == ([schedule.tick_at(now)] if fires else [])


@pytest.mark.parametrize("schedule", [Period(seconds=45), Cron("*/3 * * * *"),
                                      Cron("*/10 * * * *", "America/New_York")])
def test_a_leader_loop_with_failovers_fires_every_tick_exactly_once(schedule: Schedule) -> None:
    """The leader sleeps until next_after and wakes a little late. Sometimes it dies after
    calling but before recording the tick: the next leader, starting from the recorded tick (the
    only state that crosses over), calls again with the same tick, which the call id dedupes."""
    rng = random.Random(7)
    start, end = utc(2024, 11, 2, 12), utc(2024, 11, 3, 12)  # across New York's fall back
    now, recorded, calls, seen_until = start, schedule.tick_at(start), [], start
    while now < end:
        ticks = schedule.due(recorded, now)
        calls += ticks
        seen_until = now
        if ticks and rng.random() < 0.2:  # died before recording: a new leader takes over
            now += rng.uniform(0, 5)
            continue
        recorded = ticks[-1] if ticks else recorded
        now = schedule.next_after(now) + rng.uniform(0, 5)
    expected, t = [], start
    while (t := schedule.next_after(t)) <= seen_until:
        expected.append(schedule.tick_at(t))
    assert sorted(set(calls)) == expected  # every tick, none extra
    assert calls == sorted(calls)  # a repeat only ever repeats the tick just called
    assert len(calls) > len(set(calls))  # and failovers did happen


# Against a brute-force reference


def _value(rng: random.Random, v: int, names: list[str], offset: int) -> str:
    if names and v - offset < len(names) and rng.random() < 0.4:
        return rng.choice([str.upper, str.lower, str.title])(names[v - offset])
    return str(v)


def _random_item(rng: random.Random, low: int, high: int, names: list[str]) -> tuple[str, set[int]]:
    a, b = sorted(rng.randint(low, high) for _ in range(2))
    step = rng.randint(1, max(1, (high - low) // 3))
    match rng.randrange(5):
        case 0:
            return "*", set(range(low, high + 1))
        case 1:
            return _value(rng, a, names, low), {a}
        case 2:
            return f"{_value(rng, a, names, low)}-{_value(rng, b, names, low)}", set(range(a, b + 1))
        case 3:
            return f"*/{step}", set(range(low, high + 1, step))
        case _:
            return f"{a}-{b}/{step}", set(range(a, b + 1, step))


def _random_field(rng: random.Random, low: int, high: int, names: list[str]) -> tuple[str, set[int]]:
    if rng.random() < 0.3:  # a list of items
        items = [_random_item(rng, low, high, names) for _ in range(rng.randint(2, 3))]
        return ",".join(text for text, _ in items), set().union(*(values for _, values in items))
    return _random_item(rng, low, high, names)


MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
DAYS = "SUN MON TUE WED THU FRI SAT".split()
BOUNDS = [(0, 59, []), (0, 23, []), (1, 31, []), (1, 12, MONTHS), (0, 7, DAYS)]


def _random_cron(rng: random.Random, timezone: str, month: int) -> tuple[Cron, list[set[int]], bool]:
    """A spec the reference knows the meaning of without parsing it. The month field is kept
    near the tested range half the time, or the specs would mostly never fire in it."""
    while True:
        fields = [_random_field(rng, *bound) for bound in BOUNDS]
        if rng.random() < 0.5:
            fields[3] = (str(month), {month})
        texts, values = [t for t, _ in fields], [v for _, v in fields]
        either = not texts[2].startswith("*") and not texts[4].startswith("*")
        try:
            return Cron(" ".join(texts), timezone), values, either
        except ScheduleError as error:  # only a spec that really never fires may be refused
            assert error.field == "day-of-month" and not either
            assert not any(d <= monthrange(2024, m)[1] for m in values[3] for d in values[2])


def _reference(values: list[set[int]], either: bool, zone: ZoneInfo, start: float,
               end: float) -> list[float]:
    """Every minute in [start, end) that fires: local wall clock matches, first occurrence only."""
    minutes, hours, days, months, weekdays = values
    fires = []
    for t in range(int(start), int(end), 60):
        local = datetime.fromtimestamp(t, zone)
        in_day, in_weekday = local.day in days, local.isoweekday() % 7 in {d % 7 for d in weekdays}
        day_ok = (in_day or in_weekday) if either else (in_day and in_weekday)
        if (local.minute in minutes and local.hour in hours and local.month in months and day_ok
                and not local.fold):
            fires.append(float(t))
    return fires


@pytest.mark.parametrize(("timezone", "start"), [
    ("UTC", utc(2024, 2, 27)),  # through a leap day into March
    ("America/New_York", utc(2024, 11, 2)),  # through fall back
    ("America/New_York", utc(2024, 3, 9)),  # through spring forward
])
@pytest.mark.parametrize("seed", range(10))
def test_cron_agrees_with_brute_force(timezone: str, start: float, seed: int) -> None:
    rng = random.Random(seed * 1000 + int(start) % 997)
    end = start + 3 * 86_400
    cron, values, either = _random_cron(rng, timezone, datetime.fromtimestamp(start, UTC).month)
    expected = _reference(values, either, ZoneInfo(timezone), start, end)
    got, t = [], start - 1
    while (t := cron.next_after(t)) < end:
        got.append(t)
    assert got == expected, cron
    for now in sorted(rng.uniform(start, end) for _ in range(30)):
        earlier = [f for f in expected if f <= now]
        tick = cron.tick_at(now)
        if earlier:
            assert tick == earlier[-1] // 60, (cron, iso(now))
        else:
            assert tick is None or cron.fire_time(tick) < start, (cron, iso(now))


def test_the_brute_force_comparison_is_not_vacuous() -> None:
    """The random specs do fire inside the tested ranges (or the comparison proves little)."""
    counts = []
    for seed in range(10):
        rng = random.Random(seed * 1000 + int(utc(2024, 2, 27)) % 997)
        cron, values, either = _random_cron(rng, "UTC", 2)
        counts.append(len(_reference(values, either, ZoneInfo("UTC"), utc(2024, 2, 27), utc(2024, 3, 1))))
    assert sum(1 for c in counts if c > 0) >= 5


# as_schedule and the docstring examples


def test_as_schedule_passes_a_schedule_through() -> None:
    period = Period(seconds=1)
    assert as_schedule(period) is period


@pytest.mark.parametrize(("value", "fix"), [
    ("*/5 * * * *", "Cron('*/5 * * * *')"),
    (30, "Period(seconds=30)"),
    (timedelta(seconds=30), "Period(seconds=30)"),
    (Period, "Did you forget the parentheses?"),
    (Cron, "Did you forget the parentheses?"),
    (None, "use Period(seconds=30)"),
])
def test_as_schedule_says_the_fix(value: object, fix: str) -> None:
    with pytest.raises(DefinitionError, match="is not a schedule") as caught:
        as_schedule(value)
    assert fix in str(caught.value)


def test_the_docstring_examples_hold() -> None:
    result = doctest.testmod(schedules)
    assert result.attempted >= 3 and result.failed == 0
