"""The fields of an order-status event the byte scan reads (etl/bytescan.py), by the JSON type
the node writes: `FULL` for a batch decoded whole (etl/parse.py), fewer for the pre-filter's
light read (`etl.prefilter.light_fields`). Apart from the scan, which imports numba (~120 MB),
so that naming fields costs nothing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fields:
    """The fields read from an order-status event, by the JSON type the node writes."""

    strings: tuple[str, ...]  # the event's
    order_strings: tuple[str, ...]
    order_ints: tuple[str, ...]
    order_bools: tuple[str, ...]
    children: bool = False  # the order's `children`, kept as `[]` (any other list: Polars decodes it)
    # in block envelopes, the block's number and time too (`block_number`, `block_time` columns)
    blocks: bool = False
    # strings only checked to be strings (required, compared by no rule): the scan makes no value
    # of them (an empty string in the frame)
    checked: tuple[str, ...] = ()


FULL = Fields(("time", "user", "hash", "builder", "status"),
              ("coin", "side", "limitPx", "sz", "triggerCondition", "triggerPx", "orderType", "origSz", "tif",
               "cloid"),
              ("oid", "timestamp"), ("isTrigger", "isPositionTpsl", "reduceOnly"), children=True, blocks=True)
