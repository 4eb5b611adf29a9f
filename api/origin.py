"""Cross-origin writes refused: reads are open to every origin (CORS `*`, as the public API),
but a web page on another origin must not change nodetap's state (`PUT /v1/rules`).

CORS alone stops a browser only when it asks first (a preflight); the server checks the
`Origin` header itself too, so a write from another origin is refused whatever the browser
does. Clients without an `Origin` header (curl, scripts, the CLI) are not browsers, and a page
served by nodetap itself (the dashboard) has nodetap's own origin: both may write."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from api.errors import CrossOriginWrite

# CORS lets other origins use these: GET, and POST for the read-only /info and /v1/sql
CORS_METHODS = ("GET", "HEAD", "POST")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin_of(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the default port filled in; None where `netloc` does not parse."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return scheme.lower(), parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme.lower())


def same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether the `Origin` header names the server a request reached: `scheme` and the `Host` header."""
    scheme_of_origin, sep, netloc = origin.partition("://")
    if not sep or not netloc or "/" in netloc:
        return False  # "null" (a sandboxed page, a file://), or no origin at all
    theirs = _origin_of(scheme_of_origin, netloc)
    return theirs is not None and theirs == _origin_of(scheme, host)


def _require_same_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None or same_origin(origin, request.url.scheme, request.headers.get("host", "")):
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    raise CrossOriginWrite(
        f"{request.method} {request.url.path} refused from origin {origin[:200]}: nodetap's state is "
        f"changed only from its own origin ({own}), so that no web page on another site can change it "
        f"through your browser. curl, scripts and the CLI (which send no Origin header) and the dashboard "
        f"nodetap serves work")


# every route that changes state takes this
SameOrigin = Annotated[None, Depends(_require_same_origin)]
