"""The FastAPI app: the lifespan starts the pipeline (on its own thread) and stops it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.hub import Hub
from api.infoapi import coins_listener
from api.limits import BodyLimit, TransportTap
from api.origin import CORS_METHODS
from api.readonly import lock_instance
from api.routes import apidocs, dashboard, exports, info, live, ops, snapshots, sql
from api.state import AppState
from etl.config import Settings
from etl.malloc import startup_frozen
from etl.pipeline import Pipeline, rules_file_for
from etl.store import Store

log = logging.getLogger("nodetap.api")


def create_app(settings: Settings) -> FastAPI:
    """An app serving `settings.node_dir` through `settings.db`; nothing opens before startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.from_settings(settings)
        rules = rules_file_for(settings)
        hub = Hub(asyncio.get_running_loop(), settings)
        pipeline = Pipeline(settings, store, rules=rules, listeners=[hub.publish])
        pipeline.open()
        # the history views exist now: from here on no SQL reaches files outside the lake,
        # nor changes a setting (see api/readonly.py)
        lock_instance(store.con, pipeline.lake_root, settings.db_memory_limit)
        # a database reopened after a full disk is a new instance: lock it the same way
        store.on_reopen.append(lambda con: lock_instance(con, pipeline.lake_root, settings.db_memory_limit))
        state = AppState(settings, store, pipeline, rules, hub, started_at=time.time())
        # a commit short of DuckDB memory interrupts the API's reads: ingestion comes first
        store.memory_relief.append(state.reads.relieve)
        app.state.nodetap = state
        pipeline.listeners.append(coins_listener(state))
        pipeline.start()
        log.info("event=serve_start node_dir=%s db=%s", settings.node_dir, settings.db)
        try:
            with startup_frozen():
                yield
        finally:
            stopping = asyncio.create_task(asyncio.to_thread(pipeline.stop))
            await hub.close()
            await stopping
            store.close()
            log.info("event=serve_stop")

    # /docs is served with Swagger UI from this server (api/routes/apidocs.py), not from a CDN
    app = FastAPI(title="nodetap", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.http_max_body_bytes)
    # as the public API, any origin may read (browser apps on another origin, the TS SDK); no
    # other origin may write: PUT is not allowed here, and refused by the route too (api/origin.py)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=CORS_METHODS, allow_headers=["*"],
                       expose_headers=["*"])
    app.add_middleware(TransportTap)  # added last: the outermost
    for module in (live, info, snapshots, sql, exports, ops, dashboard, apidocs):
        app.include_router(module.router)
    return app
