"""The node's own info server (`hl-node --serve-info`, by default http://127.0.0.1:3001/info):
info types that need chain state (meta, spotMeta, perpDexs, clearinghouseState, openOrders,
...) are passed to it as they are, under the setting `node_info_url`.

When it does not answer, nodetap derives what the files allow and logs once, per info type it
knows, that the node's answer was unavailable and why; types it does not know (any string a
client sends) share one line a minute, which counts those left out, so that neither the log nor
the memory grows with what clients send. After a failed call the server is not asked
again for `RETRY_S`, so a node without `--serve-info` costs one refused connection a while.

Only http:// and https:// are ever fetched: the URL is checked (here and when the settings are
read), and the client has no handler for other schemes (urllib's default one opens file://
and ftp://) and refuses a redirect to one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPMessage
from typing import IO, Any
from urllib.parse import urljoin

import orjson

from etl.config import is_http_url

log = logging.getLogger("nodetap.nodeinfo")

TIMEOUT_S = 5.0
RETRY_S = 30.0
UNKNOWN_LOG_S = 60.0  # at most one line this often for all the types nodetap does not know
MAX_LOGGED_TYPE_CHARS = 64
MAX_ANSWER_BYTES = 256 << 20


class NodeInfoUnavailable(Exception):
    """The node's info server is not configured, did not answer, or answered an error."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status  # the node's HTTP status, when it answered with an error
        self.body = body


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows a redirect to http:// or https:// only (urllib's own follows ftp:// too)."""

    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: HTTPMessage) -> Any:
        target = urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        if not is_http_url(target):
            fp.close()
            raise urllib.error.URLError(f"it redirected to {target}: only http and https are fetched")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _http_opener() -> urllib.request.OpenerDirector:
    """urllib's opener with the http and https handlers alone (and the environment's proxies)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _HttpRedirectsOnly(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class NodeInfo:
    """A client of the node's info server at `url` ("" disables it), http:// or https:// only."""

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        if url and not is_http_url(url):
            raise ValueError(f"node_info_url must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self.clock = clock
        self._opener = _http_opener()
        self._down_until = 0.0
        self._reason = ""
        self._logged: set[str] = set()  # known types only: bounded by api.infoapi.KNOWN_TYPES
        self._unknown_next = 0.0
        self._unknown_left_out = 0
        self._lock = threading.Lock()

    def log_unavailable(self, kind: str, reason: str, fallback: str, known: bool = True) -> None:
        """Log that the node could not answer `kind`: once per known type; for a type nodetap does
        not know (a client's string: quoted, cut), one line per UNKNOWN_LOG_S for all of them."""
        with self._lock:
            if known:
                if kind in self._logged:
                    return
                self._logged.add(kind)
            else:
                now = self.clock()
                if now < self._unknown_next:
                    self._unknown_left_out += 1
                    return
                self._unknown_next = now + UNKNOWN_LOG_S
                left_out, self._unknown_left_out = self._unknown_left_out, 0
        if known:
            log.warning("event=node_info_unavailable type=%s reason=%r answer=%s (setting node_info_url; "
                        "logged once per type)", kind, reason, fallback)
        else:
            cut = len(kind) > MAX_LOGGED_TYPE_CHARS
            shown = orjson.dumps(kind[:MAX_LOGGED_TYPE_CHARS]).decode() + ("..." if cut else "")
            log.warning("event=node_info_unavailable type=%s type_chars=%d reason=%r answer=%s "
                        "unknown_type=true not_logged_since=%d (setting node_info_url; types nodetap does "
                        "not know: at most one line every %g s)",
                        shown, len(kind), reason, fallback, left_out, UNKNOWN_LOG_S)

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=TIMEOUT_S) as response:
                data: bytes = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as err:  # the node answered, with an error of its own
            raise NodeInfoUnavailable(f"the node's info server at {self.url} answered {err.code}",
                                      status=err.code, body=err.read(1 << 16)) from None
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            with self._lock:
                self._down_until = self.clock() + RETRY_S
                self._reason = f"the node's info server at {self.url} did not answer: {reason}"
            raise NodeInfoUnavailable(self._reason) from None
        if len(data) > MAX_ANSWER_BYTES:
            raise NodeInfoUnavailable(f"the node's answer is over {MAX_ANSWER_BYTES} bytes")
        return data

    async def ask(self, payload: dict[str, Any]) -> bytes:
        """The node's answer (JSON bytes, passed on as they are) to an info request."""
        if not self.url:
            raise NodeInfoUnavailable("no node info server is configured (setting node_info_url)")
        with self._lock:
            if self.clock() < self._down_until:
                raise NodeInfoUnavailable(self._reason)
        return await asyncio.to_thread(self._post, orjson.dumps(payload))
