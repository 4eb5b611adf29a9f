"""Small named errors, turned into HTTP errors in one place (`install`)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


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


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        # `code`/`msg`/`data` as well: the official SDK turns exactly those into its ClientError
        body = {"error": exc.message, "code": type(exc).__name__, "msg": exc.message, "data": None}
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, ServerBusy) else None
        return JSONResponse(body, status_code=exc.status, headers=headers)
