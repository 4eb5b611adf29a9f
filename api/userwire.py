"""The per-user and market-wide wire formats the node's fills and order statuses can give:
`userFills`/`userFillsByTime`/`userTwapSliceFills` fills, `orderUpdates`, the `user`
channel's fills, `orderStatus`/`historicalOrders` orders, and `allMids` (last trade prices).

Shapes follow the official python SDK's recorded responses
(tests/cassettes/info_test/test_get_user_fills.yaml, test_historical_orders.yaml,
test_get_all_mids.yaml) and the `@nktkas/hyperliquid` types (UserFill, OpenOrder,
FrontendOpenOrder, UserFillsEvent, AllMidsEvent).
"""

from __future__ import annotations

from typing import Any

import orjson
import polars as pl

from api.wire import (
    AllMidsSub,
    Message,
    OrderUpdatesSub,
    Sub,
    UserEventsSub,
    UserFillsSub,
    _message,
    _orders_json,
    decimal_str,
    orders_wire,
)
from etl.pipeline import Processed

FILL_KEYS = ("coin", "px", "sz", "side", "time", "startPosition", "dir", "closedPnl", "hash", "oid",
             "crossed", "fee", "tid", "feeToken", "twapId")


# ------------------------------------------------------------------ fills
def aggregate_by_time(fills: pl.DataFrame) -> pl.DataFrame:
    """`aggregateByTime`: the crossing (taker) fills of one order at one time, against several
    resting orders, become one fill: sizes, fees and closed PnL summed, price the size-weighted
    average, the rest from the first of them. Resting (maker) fills stay as they are."""
    if fills.is_empty():
        return fills
    rows = fills.with_row_index("_rn")
    taker = pl.col("crossed").fill_null(False)
    merged = (
        rows.filter(taker)
        .group_by("user", "oid", "time", maintain_order=True)
        .agg(
            pl.all().exclude("px", "sz", "fee", "closed_pnl", "builder_fee").first(),
            ((pl.col("px") * pl.col("sz")).sum() / pl.col("sz").sum()).alias("px"),
            pl.col("sz").sum(),
            pl.col("fee").sum(),
            pl.col("closed_pnl").sum(),
            pl.when(pl.col("builder_fee").is_not_null().any()).then(pl.col("builder_fee").sum())
            .alias("builder_fee"),
        )
    )
    out = pl.concat([rows.filter(~taker), merged.select(rows.columns)], how="vertical_relaxed")
    return out.sort("_rn").drop("_rn")


def fill_rows(fills: pl.DataFrame) -> list[dict[str, Any]]:
    """Fills (FILLS_SCHEMA) as the API's fill objects, in row order. `builderFee`, `cloid` and
    `liquidation` appear only where the node wrote them."""
    if fills.is_empty():
        return []
    wire = pl.DataFrame({
        "coin": fills["coin"],
        "px": decimal_str(fills["px"]),
        "sz": decimal_str(fills["sz"]),
        "side": fills["side"],
        "time": fills["time"].dt.epoch("ms"),
        "startPosition": decimal_str(fills["start_position"]),
        "dir": fills["dir"],
        "closedPnl": decimal_str(fills["closed_pnl"]),
        "hash": fills["hash"],
        "oid": fills["oid"],
        "crossed": fills["crossed"],
        "fee": decimal_str(fills["fee"]),
        "tid": fills["tid"],
        "feeToken": fills["fee_token"],
        "twapId": fills["twap_id"],
        "builderFee": decimal_str(fills["builder_fee"]),
        "cloid": fills["cloid"],
        "_liq_user": fills["liquidated_user"],
        "_liq_px": decimal_str(fills["liquidation_mark_px"]),
        "_liq_method": fills["liquidation_method"],
    })
    out = []
    for row in wire.iter_rows(named=True):
        fill = {k: row[k] for k in FILL_KEYS}
        if row["builderFee"] is not None:
            fill["builderFee"] = row["builderFee"]
        if row["cloid"] is not None:
            fill["cloid"] = row["cloid"]
        if row["_liq_px"] is not None or row["_liq_method"] is not None:
            liq: dict[str, Any] = {"markPx": row["_liq_px"], "method": row["_liq_method"]}
            if row["_liq_user"] is not None:
                liq = {"liquidatedUser": row["_liq_user"], **liq}
            fill["liquidation"] = liq
        out.append(fill)
    return out


def user_fills_json(user: str, fills: pl.DataFrame, snapshot: bool) -> str:
    """A `userFills` message: `{"channel":"userFills","data":{"isSnapshot":true,"user":..,"fills":[..]}}`
    (`isSnapshot` only on the first message of a subscription)."""
    data: dict[str, Any] = {"isSnapshot": True} if snapshot else {}
    data.update(user=user, fills=fill_rows(fills))
    return _message("userFills", orjson.dumps(data).decode())


# ------------------------------------------------------------------ orders
def order_update_rows(orders: pl.DataFrame) -> list[dict[str, Any]]:
    """Order statuses (ORDERS_SCHEMA) as `orderUpdates` items: `{order: {coin, side, limitPx,
    sz, oid, timestamp, origSz, cloid?}, status, statusTimestamp}`."""
    wire = pl.DataFrame({
        "coin": orders["coin"],
        "side": orders["side"],
        "limitPx": decimal_str(orders["limit_px"]),
        "sz": decimal_str(orders["sz"]),
        "oid": orders["oid"],
        "timestamp": orders["order_time"].dt.epoch("ms"),
        "origSz": decimal_str(orders["orig_sz"]),
        "cloid": orders["cloid"],
        "status": orders["status"],
        "statusTimestamp": orders["time"].dt.epoch("ms"),
    })
    out = []
    for row in wire.iter_rows(named=True):
        order = {k: row[k] for k in ("coin", "side", "limitPx", "sz", "oid", "timestamp", "origSz")}
        if row["cloid"] is not None:
            order["cloid"] = row["cloid"]
        out.append({"order": order, "status": row["status"], "statusTimestamp": row["statusTimestamp"]})
    return out


def frontend_orders_json(orders: pl.DataFrame) -> str:
    """Order statuses as `historicalOrders` items `[{order: {...}, status, statusTimestamp}]`."""
    return _orders_json(orders_wire(orders).drop("user"))


# ------------------------------------------------------------------ mids
def in_dex(coin: str, dex: str) -> bool:
    """Whether `coin` belongs to perp dex `dex` ("" is the first dex, with spot)."""
    return coin.startswith(f"{dex}:") if dex else ":" not in coin


def last_prices(trades: pl.DataFrame) -> dict[str, float]:
    """The last trade price of each coin of `trades` (row order breaks ties in time)."""
    last = trades.select("coin", "px", "time").with_row_index("_rn").sort("time", "_rn") \
        .group_by("coin").agg(pl.col("px").last())
    return dict(zip(last["coin"].to_list(), last["px"].to_list(), strict=True))


def mids_json(mids: dict[str, float], dex: str) -> dict[str, str]:
    coins = sorted(c for c in mids if in_dex(c, dex))
    texts = decimal_str(pl.Series([mids[c] for c in coins], dtype=pl.Float64)).to_list()
    return dict(zip(coins, texts, strict=True))


def all_mids_message(sub: AllMidsSub) -> str:
    data: dict[str, Any] = {"mids": mids_json(sub.mids, sub.dex)}
    if sub.dex:
        data["dex"] = sub.dex
    return _message("allMids", orjson.dumps(data).decode())


# ------------------------------------------------------------------ live messages
def _of_user(frame: pl.DataFrame | None, user: str) -> pl.DataFrame:
    if frame is None or frame.is_empty():
        return pl.DataFrame()
    return frame.filter(pl.col("user").str.to_lowercase() == user)


def user_messages(processed: Processed, sub: Sub) -> list[Message]:
    """The batch's message for one `allMids`, `userFills`, `orderUpdates` or `userEvents`
    subscription, if the batch has anything for it."""
    frames = processed.frames
    if isinstance(sub, AllMidsSub):
        trades = frames.get("trades")
        if trades is None or trades.is_empty():
            return []
        changed = {c: p for c, p in last_prices(trades).items() if in_dex(c, sub.dex)}
        if not changed:
            return []
        sub.mids.update(changed)
        return [(sub, all_mids_message(sub))]
    if isinstance(sub, OrderUpdatesSub):
        orders = _of_user(frames.get("orders"), sub.user)
        if orders.is_empty():
            return []
        return [(sub, _message("orderUpdates", orjson.dumps(order_update_rows(orders)).decode()))]
    if isinstance(sub, UserFillsSub | UserEventsSub):
        fills = _of_user(frames.get("fills"), sub.user)
        if fills.is_empty():
            return []
        if isinstance(sub, UserEventsSub):
            return [(sub, _message("user", orjson.dumps({"fills": fill_rows(fills)}).decode()))]
        fills = aggregate_by_time(fills) if sub.aggregate else fills
        return [(sub, user_fills_json(sub.user, fills, snapshot=False))]
    return []
