"""Query parameters the REST routes share: times, limits, flags, intervals, coins.

Each parser turns a bad value into a `BadRequest` that names the parameter and shows a valid one.
"""

from __future__ import annotations

import difflib
from typing import Any

from fastapi import Request

from api.errors import BadRequest
from etl.candles import INTERVALS
from etl.config import Settings
from etl.history import MAX_TIME_MS as MAX_TIME_MS  # the latest time a request may name
from etl.history import HistoryError, check_export, time_arg_ms, time_range_ms

MAX_LIMIT = 5000


def parse_time(raw: str | None, name: str) -> int | None:
    """Epoch milliseconds from `raw` (epoch ms or ISO 8601, UTC without a zone); None if absent."""
    try:
        return time_arg_ms(raw, name)
    except HistoryError as err:
        raise BadRequest(str(err)) from None


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """`start` and `end` as epoch ms; `end` before `start` is refused."""
    try:
        return time_range_ms(start, end)
    except HistoryError as err:
        raise BadRequest(str(err)) from None


def parse_limit(raw: str | None, default: int = 100, most: int = MAX_LIMIT) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"limit must be an integer from 1 to {most}, not {raw!r}") from None
    if not 1 <= value <= most:
        raise BadRequest(f"limit must be from 1 to {most}, not {value}")
    return value


def parse_bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, not {raw!r}")


def check_interval(interval: str, settings: Settings, stored_only: bool = True) -> str:
    """A valid interval; with `stored_only`, one the store computes (exports of the table)."""
    try:
        check_export("candles", interval, settings.candle_intervals if stored_only else INTERVALS)
    except HistoryError as err:
        raise BadRequest(str(err)) from None
    return interval


def require_coin(coin: str | None) -> str:
    if not coin:
        raise BadRequest("coin is required, as a query parameter (e.g. ?coin=BTC, ?coin=PURR%2FUSDC)")
    return coin


_TAKES: dict[int, tuple[str, ...]] = {}  # route id -> the query parameters it takes


def known_query_params(request: Request) -> None:
    """Refuse a query parameter the route does not take: a typo (`?coins=BTC`, `?interval=1m`
    on /v1/trades) would be ignored, and the answer would look right but not be what was asked."""
    if not request.query_params:
        return
    route: Any = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    takes = _TAKES.get(id(route))
    if takes is None:
        takes = _TAKES[id(route)] = tuple(dict.fromkeys(_query_params(route.dependant)))
    for name in request.query_params:
        if name not in takes:
            close = difflib.get_close_matches(name, takes, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            valid = ", ".join(takes) if takes else "none"
            raise BadRequest(f"unknown query parameter {name!r}{hint}; {route.path} takes: {valid}")


def _query_params(dependant: Any) -> list[str]:
    """The query parameters a route's function and its dependencies take."""
    return [p.alias for p in dependant.query_params] + [
        name for sub in dependant.dependencies for name in _query_params(sub)]
