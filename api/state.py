"""What the routes share: settings, the store, the running pipeline, the live hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import duckdb

from api.reader import ActiveReads
from etl.config import Settings
from etl.filters import RulesFile
from etl.pipeline import Pipeline
from etl.store import Store

if TYPE_CHECKING:
    from api.hub import Hub
    from api.nodeinfo import NodeInfo


@dataclass
class AppState:
    settings: Settings
    store: Store
    pipeline: Pipeline
    rules: RulesFile
    hub: Hub
    started_at: float = 0.0
    node_info: NodeInfo | None = None  # the node's info server; made on first use (api.infoapi)
    coins_seen: set[str] = field(default_factory=set)  # coins known to exist (api.infoapi.known_coin)
    coins_unknown: dict[str, float] = field(default_factory=dict)  # coin -> when it was found unknown
    reads: ActiveReads = field(default_factory=ActiveReads)  # what ingestion may interrupt

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection of its own (never the pipeline's writer), for tests and tools;
        routes read through `api.reader` (read-only, time-limited, off the event loop)."""
        return self.store.reader()
