"""Query parameters the REST routes share: times, limits, flags, intervals, coins.

Each parser turns a bad value into a `BadRequest` that names the parameter and shows a valid one.
"""

from __future__ import annotations

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
