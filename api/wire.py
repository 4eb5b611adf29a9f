"""The wire formats of the live feed: subscriptions, and each batch's messages in the public
Hyperliquid WebSocket protocol (plus nodetap's `orders` channel), serialised once per batch.

A failure while building one subscription's messages costs that subscription its message
for the batch and nothing else: it is counted (the hub's `feed_errors`, in /metrics as
`nodetap_ws_feed_errors_total`), logged once per kind of failure, and every other message of
the batch still goes out.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
import polars as pl

from api.encoding import ZERO_ADDRESS
from etl.candles import round_volume
from etl.pipeline import Processed

log = logging.getLogger("nodetap.wire")


# ------------------------------------------------------------------ subscriptions
@dataclass(frozen=True)
class TradesSub:
    coin: str


@dataclass(frozen=True)
class CandleSub:
    coin: str
    interval: str


@dataclass(frozen=True)
class OrdersSub:
    """nodetap's filtered order feed; each field narrows what the global rules kept."""

    coin: str  # "*": every coin
    min_notional: float = 0.0  # limit_px * orig_sz, as the rules measure it
    statuses: tuple[str, ...] = ()  # empty: every status
    users: tuple[str, ...] = ()  # lowercase addresses; empty: every user


@dataclass(frozen=True)
class AllMidsSub:
    """The public `allMids`: the last trade price of every coin (not the book's mid)."""

    dex: str = ""  # "": the first perp dex and spot; "km": the coins `km:*`
    # every coin's last price so far; carried by the subscription, seeded from the store when
    # a client subscribes, and updated by each batch (not part of the subscription's identity)
    mids: dict[str, float] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class UserFillsSub:
    user: str  # lowercase address
    aggregate: bool = False  # aggregateByTime


@dataclass(frozen=True)
class OrderUpdatesSub:
    user: str


@dataclass(frozen=True)
class UserEventsSub:
    user: str


Sub = TradesSub | CandleSub | OrdersSub | AllMidsSub | UserFillsSub | OrderUpdatesSub | UserEventsSub
Message = tuple[Sub, str]


# ------------------------------------------------------------------ wire formats
def decimal_str(values: pl.Series) -> pl.Series:
    """Floats as the API writes decimals: shortest round-trip digits, never an exponent
    ("97000.0", "0.00001")."""
    out = values.cast(pl.String)
    sci = out.str.contains("e", literal=True).fill_null(False)
    if sci.any():
        idx = sci.arg_true()
        out = out.scatter(idx, [_plain(v) for v in values.gather(idx).to_list()])
    return out


def _plain(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    text = format(Decimal(repr(x)), "f")  # the shortest round-trip digits, without an exponent
    return text if "." in text else text + ".0"


def candle_wire(candles: pl.DataFrame) -> pl.DataFrame:
    """Candles (CANDLE_SCHEMA) as the API's candle objects: t, T, s, i, o, c, h, l, v, n,
    prices and volume as strings. Volume is rounded (`etl.candles.round_volume`: float sums
    carry noise)."""
    return pl.DataFrame(
        {
            "t": candles["t"],
            "T": candles["T"],
            "s": candles["coin"],
            "i": candles["interval"],
            "o": decimal_str(candles["o"]),
            "c": decimal_str(candles["c"]),
            "h": decimal_str(candles["h"]),
            "l": decimal_str(candles["l"]),
            "v": decimal_str(round_volume(candles["v"])),
            "n": candles["n"],
        },
        schema={"t": pl.Int64, "T": pl.Int64, "s": pl.String, "i": pl.String, "o": pl.String,
                "c": pl.String, "h": pl.String, "l": pl.String, "v": pl.String, "n": pl.Int64},
    )


def _message(channel: str, data_json: str) -> str:
    return f'{{"channel":"{channel}","data":{data_json}}}'


def trade_wire(trades: pl.DataFrame) -> pl.DataFrame:
    """Trades (TRADES_SCHEMA) in the public API's shape: the `trades` channel, `recentTrades`.
    An unknown buyer or seller (its maker fill lost in a recorded gap, or later than the live
    feed's wait for it; stored as NULL) is ZERO_ADDRESS: the SDKs' types take two addresses
    (the Rust SDK's `Trade.users` is `(String, String)`: a null fails the whole message)."""
    users = pl.concat_list(pl.col("buyer", "seller").fill_null(ZERO_ADDRESS)).alias("u")
    return pl.DataFrame({
        "coin": trades["coin"], "side": trades["side"], "px": decimal_str(trades["px"]),
        "sz": decimal_str(trades["sz"]), "hash": trades["hash"], "time": trades["time"].dt.epoch("ms"),
        "tid": trades["tid"], "users": trades.select(users)["u"],
    })


def trade_messages(trades: pl.DataFrame, coins: Iterable[str]) -> list[Message]:
    """One `trades` message per coin of `coins` present in `trades` (TRADES_SCHEMA), in row order."""
    sel = trades.filter(pl.col("coin").is_in(list(coins)))
    if sel.is_empty():
        return []
    parts = trade_wire(sel).partition_by("coin", as_dict=True, maintain_order=True)
    return [(TradesSub(str(coin)), _message("trades", part.write_json())) for (coin,), part in parts.items()]


def candle_messages(candles: pl.DataFrame, subs: Iterable[CandleSub]) -> list[Message]:
    """One `candle` message per changed candle of a subscribed (coin, interval)."""
    keys = pl.DataFrame([(s.coin, s.interval) for s in subs], schema=["coin", "interval"], orient="row")
    sel = candles.join(keys, on=["coin", "interval"], how="semi").sort("t")
    out: list[Message] = []
    for row in candle_wire(sel).iter_rows(named=True):
        out.append((CandleSub(row["s"], row["i"]), _message("candle", orjson.dumps(row).decode())))
    return out


def _orders_filter(sub: OrdersSub) -> pl.Expr | None:
    """The rows an orders subscription takes; None: every row (no predicate to evaluate)."""
    conds: list[pl.Expr] = []
    if sub.coin != "*":
        conds.append(pl.col("coin") == sub.coin)
    if sub.min_notional > 0:
        conds.append((pl.col("limit_px") * pl.col("orig_sz")) >= sub.min_notional)
    if sub.statuses:
        conds.append(pl.col("status").is_in(list(sub.statuses)))
    if sub.users:
        conds.append(pl.col("user").str.to_lowercase().is_in(list(sub.users)))
    return pl.all_horizontal(conds).fill_null(False) if conds else None


def orders_wire(orders: pl.DataFrame) -> pl.DataFrame:
    """Orders (ORDERS_SCHEMA) as Hyperliquid's orderUpdates items:
    {order: {...}, status, statusTimestamp, user}; `children` still JSON text."""
    cols = {
        "coin": orders["coin"],
        "side": orders["side"],
        "limitPx": decimal_str(orders["limit_px"]),
        "sz": decimal_str(orders["sz"]),
        "oid": orders["oid"],
        "timestamp": orders["order_time"].dt.epoch("ms"),
        "triggerCondition": orders["trigger_condition"],
        "isTrigger": orders["is_trigger"],
        "triggerPx": decimal_str(orders["trigger_px"]),
        "children": orders["children"].fill_null("[]"),
        "isPositionTpsl": orders["is_position_tpsl"],
        "reduceOnly": orders["reduce_only"],
        "orderType": orders["order_type"],
        "origSz": decimal_str(orders["orig_sz"]),
        "tif": orders["tif"],
        "cloid": orders["cloid"],
    }
    return pl.DataFrame(cols).select(
        pl.struct(list(cols)).alias("order"),
        status=orders["status"],
        statusTimestamp=orders["time"].dt.epoch("ms"),
        user=orders["user"],
    )


def _orders_json(wire: pl.DataFrame) -> str:
    text = wire.write_json().replace('"children":"[]"', '"children":[]')
    if '"children":"' not in text:
        return text
    # rare: an order with child orders; splice its stored JSON in as it is
    rows = wire.to_dicts()
    for row in rows:
        row["order"]["children"] = orjson.Fragment(row["order"]["children"])
    return orjson.dumps(rows).decode()


def order_message(orders: pl.DataFrame, sub: OrdersSub) -> list[Message]:
    """The `orders` message of one subscription, if any order matches."""
    keep = _orders_filter(sub)
    sel = orders if keep is None else orders.filter(keep)
    return [(sub, _message("orders", _orders_json(orders_wire(sel))))] if sel.height else []




class FeedErrors:
    """Failures while building messages: counted, each kind logged once."""

    def __init__(self) -> None:
        self.count = 0
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def record(self, what: str, err: Exception) -> None:
        key = (what, type(err).__name__)
        with self._lock:
            self.count += 1
            first = key not in self._logged
            self._logged.add(key)
        if first:
            log.error("event=feed_build_error channel=%s error=%s detail=%s (logged once per kind; "
                      "the batch's other messages were sent)", what, type(err).__name__, err, exc_info=err)


FEED_ERRORS = FeedErrors()


def build_messages(processed: Processed, subs: Iterable[Sub], derived: pl.DataFrame | None = None,
                   errors: FeedErrors = FEED_ERRORS) -> list[Message]:
    """Every message a committed batch yields for the given subscriptions, each serialised once.

    `derived`: the candles of intervals not stored that the batch changed (api.livecandles);
    `errors`: where a failure to build one subscription's messages is counted."""
    from api.userwire import user_messages  # the user channels build on the formats above

    def guarded(what: str, build: Callable[[], list[Message]]) -> list[Message]:
        try:
            return build()
        except Exception as err:  # one subscription's failure must not cost anyone else a message
            errors.record(what, err)
            return []

    subs = list(subs)
    trades_coins = {s.coin for s in subs if isinstance(s, TradesSub)}
    candle_subs = [s for s in subs if isinstance(s, CandleSub)]
    frames = processed.frames
    trades, orders = frames.get("trades"), frames.get("orders")
    changed = [c for c in (processed.candles, derived) if c is not None and c.height]
    out: list[Message] = []
    if trades_coins and trades is not None and trades.height:
        out += guarded("trades", lambda: trade_messages(trades, trades_coins))
    if candle_subs and changed:
        out += guarded("candle", lambda: candle_messages(pl.concat(changed), candle_subs))
    if orders is not None and orders.height:
        for sub in subs:
            if isinstance(sub, OrdersSub):
                out += guarded("orders", lambda s=sub: order_message(orders, s))  # type: ignore[misc]
    for sub in subs:
        if isinstance(sub, AllMidsSub | UserFillsSub | OrderUpdatesSub | UserEventsSub):
            out += guarded(type(sub).__name__, lambda s=sub: user_messages(processed, s))  # type: ignore[misc]
    return out


def lagged_notice(dropped: int) -> str:
    return _message("lagged", f'{{"dropped":{dropped}}}')
