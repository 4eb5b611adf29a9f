"""Small named errors, turned into HTTP errors in one place (`install`)."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException
from starlette.routing import Match


class ApiError(Exception):
    """Base: `status` is the HTTP status, the message says what was wrong and what to change."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


NO_ACTIONS = ("nodetap serves a node's data and takes no actions: send orders, cancels and transfers "
              "to the exchange API")


class ReadOnly(ApiError):
    """An action (`POST /exchange`): nodetap only reads the node's files."""

    status = 403


class CrossOriginWrite(ApiError):
    """A request that changes state (`PUT /v1/rules`) from a web page on another origin."""

    status = 403


class SqlRefused(ApiError):
    """The statement is not a read-only query, or touches files, extensions or settings."""

    status = 400


class ReadTimeout(ApiError):
    """A read of the database ran past its time limit (`sql_timeout_s`) and was interrupted."""

    status = 408


class SqlTimeout(ReadTimeout):
    """A `POST /v1/sql` query ran past `sql_timeout_s` and was interrupted."""


class SqlTooLarge(ApiError):
    """The query needs more memory than `db_memory_limit`, or its result is over `sql_max_result_bytes`."""

    status = 400


class SqlBusy(ApiError):
    """`sql_max_concurrent` queries are running already."""

    status = 429


class ServerBusy(ApiError):
    """DuckDB's memory (`db_memory_limit`) is in use, or ingestion needed it and stopped this
    read: retry in a moment (503 with Retry-After)."""

    status = 503
    retry_after_s = 1


class SqlError(ApiError):
    """DuckDB could not run the query (syntax, unknown column, type error): its message is passed on."""

    status = 400


MAX_PATH_CHARS = 200  # of a request's path echoed in a 404 or 405


def error_body(code: str, message: str) -> dict[str, object]:
    # `code`/`msg`/`data` as well: the official SDK turns exactly those into its ClientError
    return {"error": message, "code": code, "msg": message, "data": None}


def _http_message(request: Request, exc: HTTPException) -> str:
    """What Starlette's own errors (no route, wrong method) mean, in nodetap's words."""
    path = request.url.path
    if len(path) > MAX_PATH_CHARS:
        path = path[:MAX_PATH_CHARS] + "..."
    where = f"{request.method} {path}"
    if exc.status_code == 404 and exc.detail == HTTPStatus.NOT_FOUND.phrase:
        return f"no such endpoint: {where} (every endpoint: GET /docs)"
    if exc.status_code == 405:
        return f"method not allowed: {where} (allowed: {(exc.headers or {}).get('Allow') or 'none'})"
    return str(exc.detail)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed(request: Request) -> str:
    """Every method some route takes at the request's path: Starlette's Allow names only the
    first route's (`GET` for /v1/rules, which also takes PUT)."""
    routes = request.app.router.routes
    return ", ".join(m for m in METHODS if any(
        route.matches({**request.scope, "method": m})[0] == Match.FULL for route in routes))


def _code(status: int) -> str:
    """The status's name as a `code`, as ApiError's are class names: 404 -> NotFound."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "HTTPError"
    return "".join(w[:1].upper() + w[1:] for w in phrase.replace("-", " ").split())


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServerBusy) else None
        body = error_body(type(exc).__name__, exc.message)
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        """Starlette's and FastAPI's own errors (an unknown path: 404, a wrong method: 405 with
        its Allow header) in the same shape as nodetap's."""
        if not is_body_allowed_for_status_code(exc.status_code):
            return Response(status_code=exc.status_code, headers=exc.headers)
        headers = exc.headers
        if exc.status_code == 405 and (allowed := _allowed(request)):
            headers = {**(headers or {}), "Allow": allowed}
            exc = HTTPException(405, exc.detail, headers)
        body = error_body(_code(exc.status_code), _http_message(request, exc))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)
