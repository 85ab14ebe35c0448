"""The market_spread example: orders and NBBO quotes, merged in transact_time order; an order
is rejected (output) when its symbol's last quote had a spread >= 0.05 or >= 5% of mid, or
when its symbol has no quote yet."""

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import wallaroo.testing

HERE = Path(__file__).parent
APP_FILE = HERE / "market_spread.py"
ORDERS = HERE / "orders.txt"
NBBO = HERE / "nbbo.txt"
EXPECTED = HERE / "rejected_expected.txt"
NO_QUOTE = (0.0, 0.0, True)  # (bid, offer, reject) of a symbol never quoted


def load_module():
    spec = importlib.util.spec_from_file_location(APP_FILE.stem, APP_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def records(path):
    return [line for line in path.read_bytes().splitlines() if line]


def transact_time(record):
    fields = record.decode().split(",")
    return fields[-1] if fields[0] == "1" else fields[2]


def feed():
    """Both sources as (source, record), in transact_time order (the times are all distinct)."""
    pairs = [("orders", r) for r in records(ORDERS)] + [("market_data", r) for r in records(NBBO)]
    assert len({transact_time(r) for _, r in pairs}) == len(pairs)
    return sorted(pairs, key=lambda pair: transact_time(pair[1]))


def expected_lines():
    return EXPECTED.read_text().splitlines()


def quote_state(fields):
    bid, offer = float(fields[3]), float(fields[4])
    spread = offer - bid
    return bid, offer, spread >= 0.05 or spread / ((bid + offer) / 2) >= 0.05


def outcome(fields, state):
    """The original's text output for order `fields` seen with quote `state`, or None."""
    bid, offer, reject = state
    if not reject:
        return None
    _, side, account, order_id, symbol, qty, price, time = fields
    return ("side=%s, account=%d, order_id=%s, symbol=%s, quantity=%d, price=%f, "  # noqa: UP031
            "bid=%f, offer=%f, transact_time=%s" % (side, int(account), order_id, symbol,
                                                    float(qty), float(price), bid, offer, time))


def rejections_for(pairs):
    last, out = {}, []
    for _, record in pairs:
        fields = record.decode().split(",")
        if fields[0] == "2":
            last[fields[1]] = quote_state(fields)
        elif (line := outcome(fields, last.get(fields[4], NO_QUOTE))) is not None:
            out.append(line)
    return out


def test_expected_file_follows_the_rules():
    assert expected_lines() == rejections_for(feed())
    assert len(expected_lines()) == 13
    # Unquoted symbols reject at 0/0; GE 0.50/0.54 rejects on the 5%-of-mid rule alone and
    # S 10.00/10.05 on the 0.05 spread rule alone.
    assert sum("bid=0.000000, offer=0.000000" in line for line in expected_lines()) == 3
    assert any("order_id=000003, symbol=GE" in line for line in expected_lines())
    assert any("order_id=000026, symbol=S" in line for line in expected_lines())


@pytest.mark.parametrize(("bid", "offer", "reject"), [
    (174.20, 174.22, False), (174.00, 174.10, True), (0.50, 0.54, True),
    (11.98, 12.02, False), (0.20, 0.22, True), (93.00, 93.02, False),
    (10.00, 10.05, True), (10.00, 10.04, False),
])
def test_spread_rules(bid, offer, reject):
    app = load_module()
    state = app.SymbolData()
    app.update_market_data(app.MarketDataMessage("X", "t", bid, offer), state)
    assert (state.last_bid, state.last_offer, state.should_reject_trades) == (bid, offer, reject)


def test_rejections_in_feed_order():
    result = wallaroo.testing.run(load_module().application_setup([]), feed())
    assert result.dead_letters == []
    assert result.lines("rejections") == expected_lines()


def test_swapped_sources_fail_to_decode():
    swapped = [("orders", records(NBBO)[0]), ("market_data", records(ORDERS)[0])]
    result = wallaroo.testing.run(load_module().application_setup([]), swapped)
    assert result.lines("rejections") == []
    assert [d.reason for d in result.dead_letters] == ["decode_error", "decode_error"]
    assert all("Wrong Fix message type" in d.error for d in result.dead_letters)


def field(line, name):
    return dict(part.split("=", 1) for part in line.split(", "))[name]


def explainable(outputs, pairs):
    """Whether `outputs` is what some interleaving of the two sources gives, each source in its
    own order: a runner consumes its sources independently, so an order may meet any quote of
    its symbol not before the one it met in an earlier order."""
    quotes, orders, produced = defaultdict(list), defaultdict(list), defaultdict(list)
    for _, record in pairs:
        fields = record.decode().split(",")
        if fields[0] == "2":
            quotes[fields[1]].append(quote_state(fields))
        else:
            orders[fields[4]].append(fields)
    for line in outputs:
        produced[field(line, "symbol")].append(line)
    if set(produced) - set(orders):
        return False
    return all(_explainable(orders[s], [NO_QUOTE, *quotes[s]], produced[s]) for s in orders)


def _explainable(orders, states, produced):
    k, produced = 0, list(produced)
    for fields in orders:
        line = produced[0] if produced and field(produced[0], "order_id") == fields[3] else None
        # The earliest quote that gives what was seen leaves the most choice to later orders.
        k = next((j for j in range(k, len(states)) if outcome(fields, states[j]) == line), None)
        if k is None:
            return False
        produced = produced[1:] if line is not None else produced
    return not produced


def test_explainable_accepts_other_interleavings_and_rejects_impossible_outputs():
    lines, pairs = expected_lines(), feed()
    quotes_first = sorted(pairs, key=lambda pair: pair[0] == "orders")
    orders_first = sorted(pairs, key=lambda pair: pair[0] == "market_data")
    for order in (pairs, quotes_first, orders_first):
        assert explainable(rejections_for(order), pairs)
    assert rejections_for(quotes_first) != lines != rejections_for(orders_first)
    # 000002 accepted means T's quote came first; then the later 000014 cannot meet 0/0.
    assert not explainable(lines[1:], pairs)
    assert not explainable(lines[::-1], pairs)
    assert not explainable([*lines, lines[0]], pairs)
    assert not explainable([lines[0].replace("bid=0.000000", "bid=0.500000")], pairs)


@pytest.mark.integration
def test_on_runner(run_on_runner):
    outputs = run_on_runner(APP_FILE, feed())
    assert explainable(outputs["rejections"], feed())
