"""`meta`'s size decimals, derived from stored trades (api/infometa.py)."""

from __future__ import annotations

import duckdb

from api.infometa import _sz_decimals


def test_size_decimals_count_digits_of_tiny_sizes_too() -> None:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA history")  # the API's view of DuckDB + the lake
    con.execute("CREATE TABLE history.trades (coin VARCHAR, sz DOUBLE)")
    con.execute("INSERT INTO history.trades VALUES ('BTC', 0.00004), ('BTC', 0.5), ('ETH', 1.25), "
                "('HYPE', 3.0), ('kPEPE', 1e-08), ('X', 123456789.0)")
    assert _sz_decimals(con) == {"BTC": 5, "ETH": 2, "HYPE": 0, "kPEPE": 8, "X": 0}
