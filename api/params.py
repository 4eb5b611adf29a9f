"""Query parameters the REST routes share: times, limits, flags, intervals, coins.

Each parser turns a bad value into a `BadRequest` that names the parameter and shows a valid one.
"""

from __future__ import annotations

from api.errors import BadRequest
from etl.candles import INTERVALS
from etl.config import Settings
from etl.history import HistoryError, parse_time_ms

MAX_LIMIT = 5000
# the times Python's datetime can hold (years 1 to 9999), in epoch ms: anything beyond is a typo
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999


def parse_time(raw: str | None, name: str) -> int | None:
    """Epoch milliseconds from `raw` (epoch ms or ISO 8601, UTC without a zone); None if absent."""
    example = f"e.g. {name}=1767610680000 or {name}=2026-01-05T10:58:00Z"
    try:
        value = parse_time_ms(raw, name)
    except HistoryError as err:
        raise BadRequest(f"{err} ({example})") from None
    except (OverflowError, ValueError):
        raise BadRequest(f"{name}: {raw!r} is not a time between the years 1 and 9999 ({example})") from None
    if value is not None and not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise BadRequest(f"{name}: {raw} is out of range: epoch milliseconds from {MIN_TIME_MS} to "
                         f"{MAX_TIME_MS} (years 1 to 9999; {example})")
    return value


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """`start` and `end` as epoch ms; `end` before `start` is refused."""
    start_ms, end_ms = parse_time(start, "start"), parse_time(end, "end")
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise BadRequest(f"end ({end}) is before start ({start})")
    return start_ms, end_ms


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
    if interval not in INTERVALS:
        raise BadRequest(f"unknown interval {interval!r}; valid intervals: {' '.join(INTERVALS)}")
    if stored_only and interval not in settings.candle_intervals:
        raise BadRequest(f"interval {interval!r} is not stored here (setting candle_intervals: "
                         f"{' '.join(settings.candle_intervals)}): GET /v1/candles?coin=...&interval="
                         f"{interval} derives it on read, as POST /info candleSnapshot does")
    return interval


def require_coin(coin: str | None) -> str:
    if not coin:
        raise BadRequest("coin is required, as a query parameter (e.g. ?coin=BTC, ?coin=PURR%2FUSDC)")
    return coin
