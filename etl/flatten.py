"""Decoded events to typed, flat rows: one flattener per stream.

Each takes the frame a JSON decoder made of a batch (Polars' in `etl.parse`, the byte scan's in
`etl.bytescan`, shaped alike: the node's field names, the order or fill as a struct) and
returns the stream's row columns (`etl.columns`), with the node's strings parsed into
times and decimals.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from etl.columns import TS

# Times a node's clock can write. Outside them a time is a corrupt value, read as null: a row
# without its required `time` is a reject ("missing or out-of-range required field: time"), another
# time is left empty. Python cannot hold some such times (year 318857 for 1e16 ms): converting
# one, for the watermark, took the pipeline down.
MIN_TIME = datetime(2000, 1, 1)
MAX_TIME = datetime(2200, 1, 1)
_MIN_MS = int(MIN_TIME.replace(tzinfo=UTC).timestamp() * 1000)
_MAX_MS = int(MAX_TIME.replace(tzinfo=UTC).timestamp() * 1000)


def _iso(col: pl.Expr) -> pl.Expr:
    # node times have no zone and 0-9 fractional digits; they are UTC
    t = col.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False)
    return pl.when(t.is_between(MIN_TIME, MAX_TIME, closed="left")).then(t)


def _ms(col: pl.Expr) -> pl.Expr:
    # checked before converting: a number of ms too large for microseconds wraps around
    ok = col.is_between(_MIN_MS, _MAX_MS, closed="left")
    return pl.when(ok).then(pl.from_epoch(col, time_unit="ms").cast(TS))


def _num(col: pl.Expr) -> pl.Expr:
    return col.cast(pl.Float64, strict=False)


def order_columns(block: bool) -> dict[str, pl.Expr]:
    """Each output column of an order-status row, from a decoded event (`order` a struct)."""
    o = pl.col("order").struct
    return {
        "time": _iso(pl.col("time")),
        "block_number": pl.col("block_number") if block else pl.lit(None, pl.Int64),
        "block_time": _iso(pl.col("block_time")) if block else pl.lit(None, TS),
        "user": pl.col("user"),
        "status": pl.col("status"),
        "coin": o.field("coin"),
        "side": o.field("side"),
        "limit_px": _num(o.field("limitPx")),
        "sz": _num(o.field("sz")),
        "orig_sz": _num(o.field("origSz")),
        "oid": o.field("oid"),
        "order_time": _ms(o.field("timestamp")),
        "order_type": o.field("orderType"),
        "tif": o.field("tif"),
        "reduce_only": o.field("reduceOnly"),
        "is_trigger": o.field("isTrigger"),
        "trigger_condition": o.field("triggerCondition"),
        "trigger_px": _num(o.field("triggerPx")),
        "is_position_tpsl": o.field("isPositionTpsl"),
        "children": o.field("children"),
        "cloid": o.field("cloid"),
        "hash": pl.col("hash"),
        "builder": pl.col("builder"),
    }


def orders_flat(events: pl.DataFrame, block: bool, columns: tuple[str, ...] = ()) -> pl.DataFrame:
    exprs = order_columns(block)
    return events.select(exprs[c].alias(c) for c in (columns or exprs))



def fills_flat(events: pl.DataFrame, block: bool) -> pl.DataFrame:
    # events: one row per fill, the node's `[user, {fill}]` pair decoded as `user` and `f`, the
    # fill object (etl/parse.py)
    f, user = pl.col("f").struct, pl.col("user")
    env = (
        [pl.col("block_number"), _iso(pl.col("block_time")).alias("block_time")]
        if block
        else [pl.lit(None, pl.Int64).alias("block_number"), pl.lit(None, TS).alias("block_time")]
    )
    liq = f.field("liquidation").struct
    return events.select(
        _ms(f.field("time")).alias("time"),
        *env,
        user.alias("user"),
        f.field("coin"),
        f.field("side"),
        _num(f.field("px")).alias("px"),
        _num(f.field("sz")).alias("sz"),
        f.field("dir"),
        _num(f.field("startPosition")).alias("start_position"),
        _num(f.field("closedPnl")).alias("closed_pnl"),
        f.field("crossed"),
        _num(f.field("fee")).alias("fee"),
        f.field("feeToken").alias("fee_token"),
        _num(f.field("builderFee")).alias("builder_fee"),
        _num(f.field("deployerFee")).alias("deployer_fee"),
        f.field("oid"),
        f.field("tid"),
        f.field("hash"),
        f.field("cloid"),
        f.field("twapId").alias("twap_id"),
        liq.field("liquidatedUser").alias("liquidated_user"),
        _num(liq.field("markPx")).alias("liquidation_mark_px"),
        liq.field("method").alias("liquidation_method"),
        f.field("builder"),
    )


def _synthetic_tid() -> pl.Expr:
    """`node_trades` lines carry no trade id; the feed's `tid` is an int: derive a stable one
    from the transaction hash (48 bits) and the two orders' ids, which differ between the
    trades of one transaction."""
    info = pl.col("side_info")
    h48 = pl.col("hash").str.slice(2, 12).str.to_integer(base=16, strict=False)
    oid_b = info.list.get(0, null_on_oob=True).struct.field("oid")
    oid_s = info.list.get(1, null_on_oob=True).struct.field("oid")
    return (h48.cast(pl.Int64) ^ (oid_b * 2) ^ (oid_s * 4)).alias("tid")


def node_trades_flat(lines: pl.DataFrame) -> pl.DataFrame:
    info = pl.col("side_info")
    return lines.select(
        _iso(pl.col("time")).alias("time"),
        pl.col("coin"),
        pl.col("side"),
        _num(pl.col("px")).alias("px"),
        _num(pl.col("sz")).alias("sz"),
        pl.col("hash"),
        _synthetic_tid(),
        info.list.get(0, null_on_oob=True).struct.field("user").alias("buyer"),
        info.list.get(1, null_on_oob=True).struct.field("user").alias("seller"),
        pl.lit(None, pl.Int64).alias("block_number"),
    )
