"""The live dashboard at `/`: static HTML, CSS and JS from api/static, nothing fetched from elsewhere."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import NotFound

router = APIRouter()

STATIC = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page may talk to this server only: no CDN, no third-party fonts or scripts.
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
       "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _static_file(name: str) -> FileResponse:
    path = STATIC / name
    if name != path.name or name.startswith(".") or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise NotFound(f"no static file {name!r}")
    # no-cache: the browser revalidates (ETag) so a new release is picked up on reload
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = CSP
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=headers)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return _static_file("index.html")


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> FileResponse:
    return _static_file(name)
