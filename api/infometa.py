"""`meta`, `spotMeta` and `perpDexs` derived from the node's files, for when the node's own
info server does not answer. The files name coins, not their metadata: these answers carry
the coins seen, with what the files cannot give marked as such in docs/api.md (maxLeverage 1,
szDecimals from sampled trades, spot tokens named after the pairs, perp dexs by name only).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import duckdb

from api.encoding import ZERO_ADDRESS

_SPOT_INDEX = re.compile(r"@(\d+)")
USDC = "USDC"


def _coins(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every coin with a trade or a candle, in DuckDB or the lake (the union candleSnapshot reads):
    a coin stays listed after retention removes its rows from DuckDB."""
    rows = con.execute("SELECT DISTINCT coin FROM history.candles "
                       "UNION SELECT DISTINCT coin FROM history.trades").fetchall()
    return sorted(r[0] for r in rows if r[0])


def _sz_decimals(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Size decimals per coin, as seen in a sample of trades (the node files do not say)."""
    rows = con.execute("SELECT coin, sz FROM history.trades USING SAMPLE 20000 ROWS").fetchall()
    out: dict[str, int] = {}
    for coin, sz in rows:
        if sz is None:
            continue
        text = f"{Decimal(repr(float(sz))):f}"  # shortest round-trip digits, never exponent form
        places = 0 if "." not in text or text.endswith(".0") else len(text.split(".")[1])
        out[coin] = min(8, max(out.get(coin, 0), places))
    return out


def _is_spot(coin: str) -> bool:
    return "/" in coin or coin.startswith("@")


def perp_meta(con: duckdb.DuckDBPyConnection, dex: str = "") -> dict[str, Any]:
    """`meta`: the perps seen, those of a builder-deployed dex (`dex:NAME`) when `dex` is set.
    maxLeverage is not in the node's files and is reported as 1."""
    decimals = _sz_decimals(con)
    names = [c for c in _coins(con) if not _is_spot(c)]
    names = [c for c in names if c.startswith(f"{dex}:")] if dex else [c for c in names if ":" not in c]
    return {"universe": [{"name": c, "szDecimals": decimals.get(c, 0), "maxLeverage": 1} for c in names]}


def spot_meta(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """`spotMeta`: one pair per spot coin seen. `X/Y` names give tokens X and Y; `@k` pairs
    (index k) get a base token named `@k`, quoted in USDC, as the node's files name no tokens."""
    decimals = _sz_decimals(con)
    pairs = [c for c in _coins(con) if _is_spot(c)]
    tokens: dict[str, int] = {USDC: 0}
    token_decimals: dict[str, int] = {USDC: 8}

    def token(name: str, sz_decimals: int) -> int:
        if name not in tokens:
            tokens[name] = len(tokens)
            token_decimals[name] = sz_decimals
        return tokens[name]

    taken = {int(m.group(1)) for c in pairs if (m := _SPOT_INDEX.fullmatch(c))}
    free = (i for i in range(10**9) if i not in taken)
    universe: list[dict[str, Any]] = []
    for coin in pairs:
        m = _SPOT_INDEX.fullmatch(coin)
        if m:
            index, base, quote, canonical = int(m.group(1)), coin, USDC, False
        else:
            base, _, quote = coin.partition("/")
            index, canonical = next(free), True
        pair = [token(base, decimals.get(coin, 0)), token(quote or USDC, 8)]
        universe.append({"name": coin, "tokens": pair, "index": index, "isCanonical": canonical})
    universe.sort(key=lambda u: u["index"])
    return {
        "universe": universe,
        "tokens": [
            {"name": name, "szDecimals": token_decimals[name], "weiDecimals": max(8, token_decimals[name]),
             "index": i, "tokenId": f"0x{i:032x}", "isCanonical": True}
            for name, i in tokens.items()
        ],
    }


def perp_dexs(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any] | None]:
    """`perpDexs`: `null` for the first dex, then one entry per builder-deployed dex seen in coin
    names (`km:USTECH` -> `km`), in name order. Only `name` comes from the files; the other
    fields of the public shape are neutral (zero deployer, no caps, no sub-deployers)."""
    names = sorted({c.split(":", 1)[0] for c in _coins(con) if ":" in c and not _is_spot(c)})
    out: list[dict[str, Any] | None] = [None]
    for name in names:
        out.append({"name": name, "fullName": name, "deployer": ZERO_ADDRESS, "oracleUpdater": None,
                    "feeRecipient": None, "assetToStreamingOiCap": [], "subDeployers": [],
                    "deployerFeeScale": "0.0", "lastDeployerFeeScaleChangeTime": "1970-01-01T00:00:00",
                    "assetToFundingMultiplier": [], "assetToFundingInterestRate": []})
    return out


def derive(con: duckdb.DuckDBPyConnection, kind: str, dex: str) -> Any:
    if kind == "meta":
        return perp_meta(con, dex)
    if kind == "spotMeta":
        return spot_meta(con)
    return perp_dexs(con)
