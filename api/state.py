"""What the routes share: settings, the store, the running pipeline, the live hub."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb

from etl.config import Settings
from etl.filters import RulesFile
from etl.pipeline import Pipeline
from etl.store import Store

if TYPE_CHECKING:
    from api.hub import Hub


@dataclass
class AppState:
    settings: Settings
    store: Store
    pipeline: Pipeline
    rules: RulesFile
    hub: Hub
    thread: threading.Thread | None = None
    started_at: float = 0.0

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection for one request (never the pipeline's writer)."""
        return self.store.reader()
