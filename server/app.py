"""The gateway's Flask app factory: settings, Celery, blueprints, errors, keys and limits, CORS, metrics."""

from __future__ import annotations

import hmac
import time

from flask import Flask, Response, g, request
from flask_cors import CORS

from server.config import ServerSettings, Settings


def _loopback_host_only() -> None:
    """Open mode answers only requests addressed to a loopback name: a web page whose host name resolves to
    127.0.0.1 (DNS rebinding) sends its own name in `Host`, and is refused."""
    from server.dev import is_loopback
    from server.errors import ApiError

    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    if not is_loopback(host.lower()):
        raise ApiError(403, "forbidden_host", "open mode answers requests to localhost, 127.0.0.1 or [::1] only")


def _check_metrics_token(settings: ServerSettings) -> None:
    """`/metrics` wants `Authorization: Bearer <MESOSCAN_METRICS_TOKEN>`; without a token set, open mode only."""
    from server.errors import ApiError

    if not settings.metrics_token:  # unset or empty
        if settings.open_mode:
            return
        raise ApiError(403, "forbidden", "set MESOSCAN_METRICS_TOKEN to scrape /metrics")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "/metrics wants Authorization: Bearer <MESOSCAN_METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


def create_app(settings: Settings | None = None) -> Flask:
    """The gateway, made with `settings` (tests pass their own), or else with the environment's, read now: an
    unknown or bad `MESOSCAN_*` variable raises `serving.config.SettingsError`, one line naming it."""
    from server import api, errors, health, pages
    from server.limits import init_limits
    from server.metrics import LATENCY, REQUESTS, render
    from server.tasks import ScanApp

    root = settings if settings is not None else Settings.from_environment()
    gateway = root.server
    app = Flask(__name__)
    app.config.update(
        MESOSCAN=gateway,
        MESOSCAN_SCANNER=root.scanner,
        MESOSCAN_SERVING=root.serving,
        MAX_CONTENT_LENGTH=gateway.max_body_bytes,
    )
    app.extensions["celery"] = ScanApp(root)  # scans are published through it
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    if gateway.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(
            app.wsgi_app,
            x_for=gateway.proxy_hops,
            x_proto=gateway.proxy_hops,  # type: ignore[method-assign]
            x_host=gateway.proxy_hops,
        )
    errors.register(app)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    if gateway.open_mode:
        app.before_request(_loopback_host_only)  # before authentication and limits
    init_limits(app, api.bp)
    if gateway.allowed_origins:
        # No credentials: the extension's requests carry no cookies (its key travels in X-API-Key).
        CORS(
            app,
            resources={
                r"/api/v1/*": {"origins": gateway.allowed_origins},
                r"/healthz": {"origins": gateway.allowed_origins},
            },
            supports_credentials=False,
            allow_headers=["Content-Type", "X-API-Key"],
            expose_headers=["Location", "Retry-After"],
            methods=["GET", "POST"],
            max_age=600,
        )
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(health.bp)

    @app.get("/metrics")
    def metrics() -> Response:
        _check_metrics_token(gateway)
        return Response(render(gateway), mimetype="text/plain; version=0.0.4")

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        if "started" in g:
            LATENCY.labels(request.method, endpoint).observe(time.perf_counter() - g.started)
        return response

    return app
