"""(being written) The live hub: batches in, per-channel messages out to WebSocket clients."""

from __future__ import annotations

import asyncio

from etl.config import Settings
from etl.pipeline import Processed


class Hub:
    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings) -> None:
        self.loop = loop
        self.settings = settings

    def publish(self, processed: Processed) -> None:
        """Called on the pipeline thread after each commit."""

    async def close(self) -> None:
        """Disconnect every client."""
