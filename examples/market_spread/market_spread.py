"""Market Spread, ported from Wallaroo 0.6's examples/python/market_spread
(WallarooLabs/wallaroo, Apache-2.0).

Runs alongside a trading system: it watches market data (NBBO quotes) per stock symbol and
flags orders sent while that symbol's market looks irregular. Two sources, "orders" and
"market_data", are merged and keyed by symbol; one state computation keeps each symbol's last
bid and offer and whether trades should be rejected. A quote sets "reject" when its spread
(offer - bid) is >= 0.05 or >= 5% of its mid price; a symbol with no quote yet rejects. An
order arriving while its symbol rejects is output as a rejection with the last bid and offer.

Records are text lines instead of the original's binary FIX-ish frames, same fields and order:
    order:        1,side,account,order_id,symbol,quantity,price,transact_time
    market data:  2,symbol,transact_time,bid,offer
The leading FIX type is checked, as in the original, so swapped sources fail to decode.
Rejections are written as in the original's text encoder, except that its wall-clock
timestamp is replaced by the order's transact_time, to make the output reproducible:
    side=1, account=3, order_id=000010, symbol=AAPL, quantity=100, price=174.080000,
    bid=174.000000, offer=174.100000, transact_time=2018-03-01 14:30:01.6   (one line)
"""

import wallaroo

FIXTYPE_ORDER = 1
FIXTYPE_MARKET_DATA = 2

SIDETYPE_BUY = 1
SIDETYPE_SELL = 2

MAX_SPREAD = 0.05
MAX_SPREAD_OF_MID = 0.05


def application_setup(args):
    orders = wallaroo.source("orders", wallaroo.StreamSource(decoder=order_decoder))
    market_data = wallaroo.source(
        "market_data", wallaroo.StreamSource(decoder=market_data_decoder)
    )
    pipeline = (
        orders.merge(market_data)
        .key_by(extract_symbol)
        .to(check_market_data)
        .to_sink(wallaroo.StreamSink("rejections", encoder=order_result_encoder))
    )
    return wallaroo.build_application("market_spread", pipeline)


class MarketSpreadError(Exception):
    pass


class SymbolData:
    def __init__(self, last_bid=0.0, last_offer=0.0, should_reject_trades=True):
        self.last_bid = last_bid
        self.last_offer = last_offer
        self.should_reject_trades = should_reject_trades


class Order:
    is_order = True

    def __init__(self, side, account, order_id, symbol, qty, price, transact_time):
        self.side = side
        self.account = account
        self.order_id = order_id
        self.symbol = symbol
        self.qty = qty
        self.price = price
        self.transact_time = transact_time


class MarketDataMessage:
    is_order = False

    def __init__(self, symbol, transact_time, bid, offer):
        self.symbol = symbol
        self.transact_time = transact_time
        self.bid = bid
        self.offer = offer
        self.mid = (bid + offer) / 2.0


class OrderResult:
    def __init__(self, order, last_bid, last_offer):
        self.order = order
        self.bid = last_bid
        self.offer = last_offer


def _fields(bs, fix_type, count):
    fields = bs.decode("utf-8").split(",")
    if int(fields[0]) != fix_type:
        msg = "Wrong Fix message type. Did you connect the senders the wrong way around?"
        raise MarketSpreadError(msg)
    if len(fields) != count:
        msg = f"expected {count} comma-separated fields, got {len(fields)}: {bs!r}"
        raise MarketSpreadError(msg)
    return fields[1:]


@wallaroo.decoder(header_length=4, length_fmt=">I")
def order_decoder(bs):
    side, account, order_id, symbol, qty, price, transact_time = _fields(bs, FIXTYPE_ORDER, 8)
    return Order(int(side), int(account), order_id, symbol, float(qty), float(price),
                 transact_time)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def market_data_decoder(bs):
    symbol, transact_time, bid, offer = _fields(bs, FIXTYPE_MARKET_DATA, 5)
    return MarketDataMessage(symbol, transact_time, float(bid), float(offer))


@wallaroo.key_extractor
def extract_symbol(data):
    return data.symbol


@wallaroo.state_computation(name="Check Market Data", state=SymbolData)
def check_market_data(data, state):
    if data.is_order:
        return check_order(data, state)
    update_market_data(data, state)
    return None


def check_order(order, state):
    if state.should_reject_trades:
        return OrderResult(order, state.last_bid, state.last_offer)
    return None


def update_market_data(quote, state):
    spread = quote.offer - quote.bid
    state.last_bid = quote.bid
    state.last_offer = quote.offer
    state.should_reject_trades = spread >= MAX_SPREAD or spread / quote.mid >= MAX_SPREAD_OF_MID


@wallaroo.encoder
def order_result_encoder(data):
    o = data.order
    return (f"side={o.side}, account={o.account}, order_id={o.order_id}, "
            f"symbol={o.symbol}, quantity={int(o.qty)}, price={o.price:f}, "
            f"bid={data.bid:f}, offer={data.offer:f}, transact_time={o.transact_time}\n")
