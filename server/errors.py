"""Error answers: JSON `{"error": {"code", "message"}}` with the right status, HTML on report pages; never a trace."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}
MESSAGES = {
    404: "no such resource",
    405: "method not allowed here",
    413: "the request body is too large",
    415: "send the body as application/json",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, *, details: list | None = None, headers: dict[str, str] | None = None
) -> Response:
    if request.blueprint == "pages":
        response = current_app.make_response(
            (render_template("error.html", status=status, code=code, message=message), status)
        )
    else:
        body: dict = {"code": code, "message": message}
        if details:
            body["details"] = details
        response = jsonify(error=body)
        response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _retry_after() -> str:
    limiter = current_app.extensions.get("mesoscan_limiter")
    try:
        current = limiter.current_limit if limiter is not None else None
        if current is not None:
            import time

            return str(max(1, int(current.reset_at - time.time())))
    except Exception as exc:  # storage trouble: a conservative default
        log.debug("Retry-After from the limiter failed: %s", exc)
    return "60"


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        headers = {}
        if status == 405:
            headers["Allow"] = dict(exc.get_headers()).get("Allow", "")
        if status == 429:
            headers["Retry-After"] = _retry_after()
        message = MESSAGES.get(status) or (exc.description if status < 500 else None) or exc.name
        if status == 429:
            message = f"rate limit exceeded ({exc.description}); retry later"
        return error_response(status, CODES.get(status, exc.name.lower().replace(" ", "_")), message, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        from sqlalchemy.exc import DBAPIError, OperationalError

        if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            log.warning("database unavailable: %s", exc)
            return error_response(
                503,
                "database_unavailable",
                "the database is unreachable; try again later",
                headers={"Retry-After": "5"},
            )
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; it was logged")
