"""How the API writes what it reads: JSON responses, and the rounding of candle volumes that the
REST candles share with the live feed (files, Parquet, CSV and NDJSON: etl/formats.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

# an address where the public API has one and the files do not: a trade's unknown side, a
# derived spot token's deployer
ZERO_ADDRESS = "0x" + "0" * 40


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content, default=str), status_code=status_code,
                    media_type="application/json")
