"""What the node's lines hold, and what nodetap's rows are: every column, in one place.

The *raw* schemas are what the JSON decoder reads from each stream's lines (design.md §1);
the *row* schemas are the typed, flat columns a parser produces and the store keeps (one
table per stream kind). `*_REQUIRED` are the row columns without which a line is a reject.
"""

from __future__ import annotations

from typing import Any

import polars as pl

# ---------------------------------------------------------------- raw schemas
ORDER = pl.Struct(
    {
        "coin": pl.String,
        "side": pl.String,
        "limitPx": pl.String,
        "sz": pl.String,
        "oid": pl.Int64,
        "timestamp": pl.Int64,
        "triggerCondition": pl.String,
        "isTrigger": pl.Boolean,
        "triggerPx": pl.String,
        # `children` is [] in almost every row; typing it as nested structs costs 6x (design §4)
        "children": pl.String,
        "isPositionTpsl": pl.Boolean,
        "reduceOnly": pl.Boolean,
        "orderType": pl.String,
        "origSz": pl.String,
        "tif": pl.String,
        "cloid": pl.String,
    }
)
ORDER_EVENT: dict[str, Any] = {
    "time": pl.String,
    "user": pl.String,
    "hash": pl.String,
    "builder": pl.String,
    "status": pl.String,
    "order": ORDER,
}
FILL: dict[str, Any] = {
    "coin": pl.String,
    "px": pl.String,
    "sz": pl.String,
    "side": pl.String,
    "time": pl.Int64,
    "startPosition": pl.String,
    "dir": pl.String,
    "closedPnl": pl.String,
    "hash": pl.String,
    "oid": pl.Int64,
    "crossed": pl.Boolean,
    "fee": pl.String,
    "tid": pl.Int64,
    "feeToken": pl.String,
    "twapId": pl.Int64,
    "cloid": pl.String,
    "liquidation": pl.Struct({"liquidatedUser": pl.String, "markPx": pl.String, "method": pl.String}),
    "builder": pl.String,
    "builderFee": pl.String,
    "deployerFee": pl.String,
}
NODE_TRADE: dict[str, Any] = {
    "coin": pl.String,
    "side": pl.String,
    "time": pl.String,
    "px": pl.String,
    "sz": pl.String,
    "hash": pl.String,
    "trade_dir_override": pl.String,
    "side_info": pl.List(pl.Struct({"user": pl.String, "oid": pl.Int64})),
}
ENVELOPE: dict[str, Any] = {"block_time": pl.String, "block_number": pl.Int64}

# ------------------------------------------------------------- output schemas
TS = pl.Datetime("us")  # naive, always UTC
ORDERS_SCHEMA: dict[str, pl.DataType] = {
    "time": TS,
    "block_number": pl.Int64(),
    "block_time": TS,
    "user": pl.String(),
    "status": pl.String(),
    "coin": pl.String(),
    "side": pl.String(),
    "limit_px": pl.Float64(),
    "sz": pl.Float64(),
    "orig_sz": pl.Float64(),
    "oid": pl.Int64(),
    "order_time": TS,
    "order_type": pl.String(),
    "tif": pl.String(),
    "reduce_only": pl.Boolean(),
    "is_trigger": pl.Boolean(),
    "trigger_condition": pl.String(),
    "trigger_px": pl.Float64(),
    "is_position_tpsl": pl.Boolean(),
    "children": pl.String(),
    "cloid": pl.String(),
    "hash": pl.String(),
    "builder": pl.String(),
}
FILLS_SCHEMA: dict[str, pl.DataType] = {
    "time": TS,
    "block_number": pl.Int64(),
    "block_time": TS,
    "user": pl.String(),
    "coin": pl.String(),
    "side": pl.String(),
    "px": pl.Float64(),
    "sz": pl.Float64(),
    "dir": pl.String(),
    "start_position": pl.Float64(),
    "closed_pnl": pl.Float64(),
    "crossed": pl.Boolean(),
    "fee": pl.Float64(),
    "fee_token": pl.String(),
    "builder_fee": pl.Float64(),
    "deployer_fee": pl.Float64(),
    "oid": pl.Int64(),
    "tid": pl.Int64(),
    "hash": pl.String(),
    "cloid": pl.String(),
    "twap_id": pl.Int64(),
    "liquidated_user": pl.String(),
    "liquidation_mark_px": pl.Float64(),
    "liquidation_method": pl.String(),
    "builder": pl.String(),
}
TRADES_SCHEMA: dict[str, pl.DataType] = {
    "time": TS,
    "coin": pl.String(),
    "side": pl.String(),
    "px": pl.Float64(),
    "sz": pl.Float64(),
    "hash": pl.String(),
    "tid": pl.Int64(),
    "buyer": pl.String(),
    "seller": pl.String(),
    "block_number": pl.Int64(),
}

ORDERS_REQUIRED = ["time", "user", "status", "coin", "side", "limit_px", "oid"]
FILLS_REQUIRED = ["time", "user", "coin", "side", "px", "sz", "tid"]
TRADES_REQUIRED = ["time", "coin", "side", "px", "sz"]
# the node's name of a required column whose name differs, for a reject's reason
ORDERS_NODE_NAMES = {"coin": "order.coin", "side": "order.side", "limit_px": "order.limitPx",
                     "oid": "order.oid"}

# bytes per line assumed until a stream's own mean is known (order statuses run 477-615)
DEFAULT_LINE_BYTES = 480.0
