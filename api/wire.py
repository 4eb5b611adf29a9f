"""The wire formats of the live feed: subscriptions, and each batch's messages in the public
Hyperliquid WebSocket protocol (plus nodetap's `orders` channel), serialised once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import orjson
import polars as pl

from etl.pipeline import Processed


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


Sub = TradesSub | CandleSub | OrdersSub
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
    prices and volume as strings. Volume is rounded to 8 decimals (float sums carry noise)."""
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
            "v": decimal_str(candles["v"].round(8)),
            "n": candles["n"],
        },
        schema={"t": pl.Int64, "T": pl.Int64, "s": pl.String, "i": pl.String, "o": pl.String,
                "c": pl.String, "h": pl.String, "l": pl.String, "v": pl.String, "n": pl.Int64},
    )


def _message(channel: str, data_json: str) -> str:
    return f'{{"channel":"{channel}","data":{data_json}}}'


def trade_messages(trades: pl.DataFrame, coins: Iterable[str]) -> list[Message]:
    """One `trades` message per coin of `coins` present in `trades` (TRADES_SCHEMA), in row order."""
    sel = trades.filter(pl.col("coin").is_in(list(coins)))
    if sel.is_empty():
        return []
    wire = pl.DataFrame(
        {
            "coin": sel["coin"],
            "side": sel["side"],
            "px": decimal_str(sel["px"]),
            "sz": decimal_str(sel["sz"]),
            "hash": sel["hash"],
            "time": sel["time"].dt.epoch("ms"),
            "tid": sel["tid"],
            "users": sel.select(pl.concat_list("buyer", "seller").alias("users"))["users"],
        }
    )
    parts = wire.partition_by("coin", as_dict=True, maintain_order=True)
    return [(TradesSub(str(coin)), _message("trades", part.write_json())) for (coin,), part in parts.items()]


def candle_messages(candles: pl.DataFrame, subs: Iterable[CandleSub]) -> list[Message]:
    """One `candle` message per changed candle of a subscribed (coin, interval)."""
    keys = pl.DataFrame([(s.coin, s.interval) for s in subs], schema=["coin", "interval"], orient="row")
    sel = candles.join(keys, on=["coin", "interval"], how="semi").sort("t")
    out: list[Message] = []
    for row in candle_wire(sel).iter_rows(named=True):
        out.append((CandleSub(row["s"], row["i"]), _message("candle", orjson.dumps(row).decode())))
    return out


def _orders_filter(sub: OrdersSub) -> pl.Expr:
    keep = pl.lit(True)
    if sub.coin != "*":
        keep &= pl.col("coin") == sub.coin
    if sub.min_notional > 0:
        keep &= (pl.col("limit_px") * pl.col("orig_sz")) >= sub.min_notional
    if sub.statuses:
        keep &= pl.col("status").is_in(list(sub.statuses))
    if sub.users:
        keep &= pl.col("user").str.to_lowercase().is_in(list(sub.users))
    return keep.fill_null(False)


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


def order_messages(orders: pl.DataFrame, subs: Iterable[OrdersSub]) -> list[Message]:
    """One `orders` message per subscription with at least one matching order."""
    out: list[Message] = []
    for sub in subs:
        sel = orders.filter(_orders_filter(sub))
        if sel.height:
            out.append((sub, _message("orders", _orders_json(orders_wire(sel)))))
    return out


def build_messages(processed: Processed, subs: Iterable[Sub]) -> list[Message]:
    """Every message a committed batch yields for the given subscriptions, each serialised once."""
    trades_coins = {s.coin for s in subs if isinstance(s, TradesSub)}
    candle_subs = [s for s in subs if isinstance(s, CandleSub)]
    orders_subs = [s for s in subs if isinstance(s, OrdersSub)]
    frames = processed.frames
    out: list[Message] = []
    if trades_coins and "trades" in frames and frames["trades"].height:
        out += trade_messages(frames["trades"], trades_coins)
    if candle_subs and processed.candles is not None and processed.candles.height:
        out += candle_messages(processed.candles, candle_subs)
    if orders_subs and "orders" in frames and frames["orders"].height:
        out += order_messages(frames["orders"], orders_subs)
    return out


def lagged_notice(dropped: int) -> str:
    return _message("lagged", f'{{"dropped":{dropped}}}')
