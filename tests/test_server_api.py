"""The gateway's API in process (Flask's test client) on a real PostgreSQL and a real Redis: every error status,
keys, limits, CORS, de-duplication under concurrency, the cache, batches, the report page's escaping, health and
metrics. No worker runs here: queued scans stay in the test's own Redis queue, where the tests count them."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading

import numpy as np
import pytest
import redis

from server import jobs
from server.db import session_scope
from server.keys import create_key, hash_key, revoke_key
from server.models import ApiKey, Batch, Scan
from serving.config import ServingSettings
from serving.registry import get_model
from tests.conftest import DEFAULT_MODEL

DEFAULT_VERSION = get_model(DEFAULT_MODEL, ServingSettings()).version


def free_port() -> int:
    from tests.support.server_stack import free_port

    return free_port()


QUEUE = "mesoscan.api-tests"


@pytest.fixture
def redis_queue(stack_redis):
    client = stack_redis.client()
    client.delete(QUEUE)
    yield lambda: client.llen(QUEUE)
    client.delete(QUEUE)


@pytest.fixture
def key(pg_url) -> str:
    with session_scope(pg_url) as session:
        return create_key(session, "api tests").key


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app, key):
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = key
    return c


def unique_url(tag: str = "v") -> str:
    return f"https://videos.example/{tag}/{jobs.new_id()}.mp4"


def follows_openapi(body: dict, component: str) -> None:
    """Raise `jsonschema.ValidationError` unless `body` is what the served OpenAPI document says a `component` is
    (a scan's `result` is checked against `VerdictDocument`, the scanner's verdict schema)."""
    import jsonschema

    from server.openapi import document

    spec = document()
    schema = {"$ref": f"#/components/schemas/{component}", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def finished_scan(
    pg_url: str,
    url: str,
    title: str = "A clip",
    label: str = "fake",
    page_url: str | None = None,
    probability: float = 0.9,
) -> str:
    """A scan record finished with a schema-valid verdict document, as a worker would leave it."""
    from scanner.verdict import ScoredFace, build_document, validate

    with session_scope(pg_url) as session:
        scan = jobs.submit(
            session,
            url=url,
            page_url=page_url,
            model=DEFAULT_MODEL,
            version=DEFAULT_VERSION,
            api_key_id=None,
            cache_ttl_s=0,
        ).scan
    faces = [
        ScoredFace(
            t=t,
            frame=i,
            person=0,
            box=(10, 10, 64, 64),
            fake_probability=probability,
            image=np.full((256, 256, 3), 100, "uint8"),
        )
        for i, t in enumerate((0.5, 1.0))
    ]
    source = {
        "url": url,
        "title": title,
        "duration_s": 2.0,
        "width": 640,
        "height": 480,
        "fps": 25.0,
        "sha256": "ab" * 32,
    }
    document = build_document(
        source=source,
        model={"name": DEFAULT_MODEL, "version": DEFAULT_VERSION, "backend": "embedded"},
        threshold=0.5,
        band=0.1,
        faces=faces,
        frame_times=[0.0, 0.5, 1.0, 1.5],
        faces_skipped=0,
        keyframes=False,
        top=2,
        timings_ms={"total": 1000.0},
    )
    document["verdict"]["label"] = label
    validate(document)
    with session_scope(pg_url) as session:
        assert jobs.finish(session, scan.id, document)
    return scan.id


def failed_scan(pg_url: str, tag: str, code: str, message: str) -> str:
    """The id of a scan of a new URL that ended `failed` with this error."""
    from scanner.document import VideoSource
    from scanner.verdict import failed_document

    with session_scope(pg_url) as session:
        scan = jobs.submit(
            session,
            url=unique_url(tag),
            page_url=None,
            model=DEFAULT_MODEL,
            version=DEFAULT_VERSION,
            api_key_id=None,
            cache_ttl_s=0,
        ).scan
        document = failed_document(source=VideoSource.unknown(scan.url), model=None, code=code, message=message)
        assert jobs.finish(session, scan.id, document)
    return scan.id


# --- submission ---------------------------------------------------------------------------------------------------


def test_submit_queues_one_task_and_reports_the_scan(client, redis_queue):
    url = unique_url()
    r = client.post("/api/v1/scans", json={"url": url, "page_url": "https://news.example/story"})
    assert r.status_code == 202
    body = r.get_json()
    assert body["status"] == "queued" and body["cached"] is False and body["result"] is None
    follows_openapi(body, "Scan")
    assert r.headers["Location"] == body["status_url"] and body["status_url"].endswith(f"/api/v1/scans/{body['id']}")
    assert body["model"] == {"name": DEFAULT_MODEL, "version": DEFAULT_VERSION}
    assert redis_queue() == 1
    message = json.loads(redis.Redis.from_url(client.application.config["MESOSCAN"].broker_url).lindex(QUEUE, 0))
    assert message["headers"]["task"] == "mesoscan.scan"
    assert json.loads(base64.b64decode(message["body"]))[0] == [body["id"]]

    got = client.get(f"/api/v1/scans/{body['id']}")
    assert got.status_code == 200 and got.get_json()["page_url"] == "https://news.example/story"


def test_same_url_while_queued_joins_the_same_scan(client, redis_queue):
    url = unique_url()
    first = client.post("/api/v1/scans", json={"url": url}).get_json()
    # The same video, written differently: host case, default port, fragment, tracking parameter.
    again = client.post(
        "/api/v1/scans",
        json={"url": url.replace("https://videos.example", "HTTPS://Videos.Example:443") + "?utm_source=x#t=3"},
    )
    assert again.status_code == 202 and again.get_json()["id"] == first["id"]
    assert redis_queue() == 1


def test_concurrent_submissions_of_one_url_share_one_job(make_app, key, redis_queue):
    app = make_app()
    url = unique_url("race")
    barrier = threading.Barrier(8)

    def post(_):
        c = app.test_client()
        barrier.wait()
        r = c.post("/api/v1/scans", json={"url": url}, headers={"X-API-Key": key})
        return r.status_code, r.get_json()["id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(8)))
    assert {status for status, _ in results} == {202}
    assert len({scan_id for _, scan_id in results}) == 1
    assert redis_queue() == 1


def test_recent_verdict_is_returned_without_a_new_task(client, pg_url, redis_queue):
    url = unique_url("cached")
    scan_id = finished_scan(pg_url, url)
    r = client.post("/api/v1/scans", json={"url": url + "#again"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["cached"] is True and body["id"] == scan_id and body["status"] == "done"
    assert body["result"]["verdict"]["label"] == "fake"
    follows_openapi(body, "Scan")
    assert "Location" not in r.headers
    assert redis_queue() == 0


def test_cache_expires(make_app, key, pg_url, redis_queue):
    url = unique_url("expired")
    finished_scan(pg_url, url)
    c = make_app(cache_ttl_s=0).test_client()
    r = c.post("/api/v1/scans", json={"url": url}, headers={"X-API-Key": key})
    assert r.status_code == 202 and redis_queue() == 1


def test_another_model_is_another_scan(client, pg_url, redis_queue):
    url = unique_url("model")
    scan_id = finished_scan(pg_url, url)
    r = client.post("/api/v1/scans", json={"url": url, "model": "mesoinception4_df"})
    assert r.status_code == 202 and r.get_json()["id"] != scan_id
    assert r.get_json()["model"]["name"] == "mesoinception4_df"


# --- batches ------------------------------------------------------------------------------------------------------


def test_batch_with_duplicates_and_bad_urls(client, redis_queue, pg_url):
    a, b = unique_url("a"), unique_url("b")
    done = unique_url("done")
    done_id = finished_scan(pg_url, done)
    urls = [
        a,
        b,
        a + "#dup",
        done,
        "ftp://files.example/v.mp4",
        "http://127.0.0.1/admin",
        "not a url",
        "http://[::1]:8080/x",
        "http://169.254.169.254/latest/meta-data",
        b,
    ]
    r = client.post("/api/v1/batches", json={"urls": urls})
    assert r.status_code == 202, r.get_json()
    batch = r.get_json()
    assert r.headers["Location"] == batch["status_url"]
    assert batch["total"] == 10
    assert batch["counts"] == {"queued": 4, "running": 0, "done": 1, "failed": 0, "rejected": 5}
    assert batch["complete"] is False
    items = batch["items"]
    assert [i["url"] for i in items] == urls
    assert items[0]["scan_id"] == items[2]["scan_id"] and items[1]["scan_id"] == items[9]["scan_id"]
    assert items[0]["scan_id"] != items[1]["scan_id"]
    assert items[3]["scan_id"] == done_id and items[3]["verdict"]["label"] == "fake"
    codes = [i["error"]["code"] for i in items if i["status"] == "rejected"]
    assert codes == ["invalid_url", "blocked_address", "invalid_url", "blocked_address", "blocked_address"]
    assert redis_queue() == 2  # two distinct new URLs; the duplicates and the finished one queue nothing

    again = client.get(f"/api/v1/batches/{batch['id']}")
    assert again.status_code == 200 and again.get_json()["counts"] == batch["counts"]
    follows_openapi(batch, "Batch")
    follows_openapi(again.get_json(), "Batch")


@pytest.mark.parametrize(
    "body",
    [
        {"urls": []},
        {"urls": "https://a.example/v"},
        {"urls": [1, 2]},
        {"url": "x"},
        {"urls": ["https://a.example/v"], "extra": 1},
    ],
)
def test_invalid_batch_bodies(client, body):
    r = client.post("/api/v1/batches", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_request"


def test_batch_size_limit(make_app, key):
    c = make_app(max_batch_urls=3).test_client()
    r = c.post("/api/v1/batches", json={"urls": [unique_url() for _ in range(4)]}, headers={"X-API-Key": key})
    assert r.status_code == 400 and "at most 3" in r.get_json()["error"]["message"]


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_request"),
        ({"url": ""}, "invalid_request"),
        ({"url": 42}, "invalid_request"),
        ({"url": "https://a.example/v", "colour": "red"}, "invalid_request"),
        ([1, 2], "invalid_request"),
        ({"url": "file:///etc/passwd"}, "invalid_url"),
        ({"url": "javascript:alert(1)"}, "invalid_url"),
        ({"url": "/local/path.mp4"}, "invalid_url"),
        ({"url": "http://127.0.0.1:6379/"}, "blocked_address"),
        ({"url": "http://10.1.2.3/v.mp4"}, "blocked_address"),
        ({"url": "http://0x7f000001/"}, "blocked_address"),
        ({"url": "https://a.example/v", "page_url": "javascript:alert(1)"}, "invalid_url"),
        ({"url": "https://a.example/v", "model": "no_such_model"}, "unknown_model"),
    ],
)
def test_bad_submissions_are_400(client, redis_queue, body, code):
    r = client.post("/api/v1/scans", json=body)
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == code, r.get_json()
    assert redis_queue() == 0


def test_unparsable_json_is_400(client):
    r = client.post("/api/v1/scans", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_request"


def test_non_json_is_415(client):
    r = client.post("/api/v1/scans", data="url=https://a.example/v", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and r.get_json()["error"]["code"] == "unsupported_media_type"


def test_large_body_is_413(make_app, key):
    c = make_app(max_body_bytes=2048).test_client()
    r = c.post("/api/v1/scans", json={"url": "https://a.example/" + "x" * 4000}, headers={"X-API-Key": key})
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "body_too_large"


def test_missing_and_wrong_keys_are_401(app, redis_queue):
    c = app.test_client()
    r = c.post("/api/v1/scans", json={"url": unique_url()})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("ApiKey")
    r = c.get("/api/v1/scans/abc", headers={"X-API-Key": "msk_wrong"})
    assert r.status_code == 401
    assert redis_queue() == 0


def test_revoked_key_is_401(make_app, pg_url):
    with session_scope(pg_url) as session:
        new = create_key(session, "to revoke")
    c = make_app().test_client()
    assert c.get("/api/v1/scans/none", headers={"X-API-Key": new.key}).status_code == 404
    with session_scope(pg_url) as session:
        revoke_key(session, new.id)
    c = make_app().test_client()  # a fresh app forgets cached keys (in production: within 10 s)
    assert c.get("/api/v1/scans/none", headers={"X-API-Key": new.key}).status_code == 401


def test_keys_are_stored_hashed(pg_url, key):
    with session_scope(pg_url) as session:
        rows = session.query(ApiKey).all()
        assert all(key not in (r.key_hash, r.prefix, r.name) for r in rows)
        assert any(r.key_hash == hash_key(key) for r in rows)


def test_unknown_ids_are_404(client):
    for path in (
        "/api/v1/scans/doesnotexist",
        "/api/v1/batches/doesnotexist",
        "/api/v1/scans/..%2F..%2Fetc",
        "/api/v1/nothing-here",
    ):
        r = client.get(path)
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found", path


def test_wrong_method_is_405_json(client):
    r = client.delete("/api/v1/scans")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


def test_rate_limit_per_key_is_429_with_retry_after(make_app, pg_url, redis_queue):
    with session_scope(pg_url) as session:
        limited = create_key(session, "limited", rate_limit="2/minute").key
        other = create_key(session, "other").key
    c = make_app().test_client()
    statuses = [
        c.post("/api/v1/scans", json={"url": unique_url()}, headers={"X-API-Key": limited}).status_code
        for _ in range(3)
    ]
    assert statuses == [202, 202, 429]
    r = c.post("/api/v1/batches", json={"urls": [unique_url()]}, headers={"X-API-Key": limited})
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # Other keys and reads have their own budgets.
    assert c.post("/api/v1/scans", json={"url": unique_url()}, headers={"X-API-Key": other}).status_code == 202
    assert c.get("/api/v1/scans/none", headers={"X-API-Key": limited}).status_code == 404


def test_broker_down_is_503_and_leaves_nothing_behind(make_app, key, pg_url):
    c = make_app(broker_url=f"redis://127.0.0.1:{free_port()}/0", ratelimit_storage_url="memory://").test_client()
    url = unique_url("down")
    r = c.post("/api/v1/scans", json={"url": url}, headers={"X-API-Key": key})
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "broker_unavailable" and r.headers["Retry-After"]
    with session_scope(pg_url) as session:
        assert session.query(Scan).filter(Scan.url == url).count() == 0
    with session_scope(pg_url) as session:
        batches = session.query(Batch).count()
    r = c.post("/api/v1/batches", json={"urls": [unique_url(), "ftp://x"]}, headers={"X-API-Key": key})
    assert r.status_code == 503
    with session_scope(pg_url) as session:
        assert session.query(Batch).count() == batches


def test_database_down_is_503_not_500(make_app, key):
    c = make_app(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none").test_client()
    r = c.get("/api/v1/scans/abc", headers={"X-API-Key": key})
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "database_unavailable"
    assert "Traceback" not in r.get_data(as_text=True)


def test_open_mode_needs_no_key(make_app, redis_queue):
    c = make_app(open_mode=True).test_client()
    r = c.post("/api/v1/scans", json={"url": unique_url()})
    assert r.status_code == 202


# --- CORS ---------------------------------------------------------------------------------------------------------


def test_cors_only_for_the_extension_and_configured_origins(make_app, key):
    ext = "chrome-extension://abcdefghijklmnopabcdefghijklmnop"
    c = make_app(extension_origin=ext, cors_origins=["https://dash.example"]).test_client()
    for origin in (ext, "https://dash.example"):
        pre = c.options(
            "/api/v1/scans",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key",
            },
        )
        assert pre.headers.get("Access-Control-Allow-Origin") == origin
        assert "x-api-key" in pre.headers.get("Access-Control-Allow-Headers", "").lower()
    r = c.get("/api/v1/scans/x", headers={"Origin": "https://evil.example", "X-API-Key": key})
    assert "Access-Control-Allow-Origin" not in r.headers
    plain = make_app().test_client().get("/api/v1/scans/x", headers={"Origin": ext, "X-API-Key": key})
    assert "Access-Control-Allow-Origin" not in plain.headers


# --- the report page ----------------------------------------------------------------------------------------------


def test_report_page_escapes_what_came_from_the_video(app, pg_url):
    evil = '<script>alert("t")</script><img src=x onerror=alert(1)>'
    scan_id = finished_scan(
        pg_url, unique_url("xss") + '?q="><script>alert(2)</script>', title=evil, page_url="javascript:alert(3)"
    )
    with session_scope(pg_url) as session:
        token = jobs.page_of(session, scan_id, None).id  # the page URL shows on its submission's report link only
    r = app.test_client().get(f"/scans/{scan_id}?s={token}")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "<script" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html and "javascript:alert(3)" in html  # shown as text, not linked
    assert "script-src" not in r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert "Likely fake" in html and "<svg" in html and "data:image/jpeg;base64," in html
    assert html.count("<circle") == 2  # two frames with faces; two without (ticks)


def test_report_page_for_queued_failed_and_missing(client, app, pg_url):
    queued = client.post("/api/v1/scans", json={"url": unique_url("wait")}).get_json()["id"]
    page = app.test_client().get(f"/scans/{queued}")
    assert page.status_code == 200 and 'http-equiv="refresh"' in page.get_data(as_text=True)

    failed = failed_scan(pg_url, "fail", "not_a_video", "<b>not a video</b>")
    html = app.test_client().get(f"/scans/{failed}").get_data(as_text=True)
    assert "Scan failed" in html and "&lt;b&gt;not a video&lt;/b&gt;" in html and "not_a_video" in html

    missing = app.test_client().get("/scans/nope")
    assert missing.status_code == 404 and missing.mimetype == "text/html"


def test_scan_answers_carry_the_verdict_document_as_documented(client, pg_url):
    """What the gateway answers for a done and a failed scan follows the OpenAPI document, whose `VerdictDocument`
    is the scanner's verdict schema."""
    import jsonschema

    from scanner.verdict import validate

    done_id = finished_scan(pg_url, unique_url("documented"))
    failed_id = failed_scan(pg_url, "documented-fail", "not_a_video", "no")
    for scan_id, status in ((done_id, "done"), (failed_id, "failed")):
        body = client.get(f"/api/v1/scans/{scan_id}").get_json()
        assert body["status"] == body["result"]["status"] == status
        follows_openapi(body, "Scan")
        validate(body["result"])
        broken = {**body, "result": {**body["result"], "status": "done" if status == "failed" else "failed"}}
        with pytest.raises(jsonschema.ValidationError):
            follows_openapi(broken, "Scan")


# --- health and metrics -------------------------------------------------------------------------------------------


def test_healthz_and_readyz(app, make_app):
    c = app.test_client()
    assert c.get("/healthz").get_json() == {"status": "ok"}
    ready = c.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert all(check["ok"] for check in ready.get_json()["checks"].values())
    down = make_app(broker_url=f"redis://127.0.0.1:{free_port()}/0").test_client().get("/readyz")
    assert down.status_code == 503
    checks = down.get_json()["checks"]
    assert checks["broker"]["ok"] is False and checks["database"]["ok"] is True


def test_metrics(client, pg_url, stack_redis):
    from server.metrics import record_stage_timings

    finished_scan(pg_url, unique_url("metrics"))
    client.post("/api/v1/scans", json={"url": unique_url("metrics")})
    record_stage_timings(stack_redis.client(), {"fetch": 300.0, "total": 1500.0})
    text = client.get("/metrics", headers={"Authorization": "Bearer test-metrics-token"}).get_data(as_text=True)
    assert 'mesoscan_scans{label="fake",status="done"}' in text
    assert "mesoscan_queue_depth" in text
    assert 'mesoscan_stage_seconds_bucket{le="0.5",stage="fetch"}' in text
    assert 'mesoscan_http_requests_total{endpoint="/api/v1/scans",method="POST",status="202"}' in text
    assert 'mesoscan_submissions_total{outcome="created"}' in text


def test_openapi_document_is_served_and_valid(app):
    from openapi_spec_validator import validate

    from scanner.verdict import schema

    r = app.test_client().get("/api/v1/openapi.json")  # public: no key
    assert r.status_code == 200
    validate(r.get_json())
    # the components are the scanner's verdict schema, its `verdict` part made a component of its own
    schemas = r.get_json()["components"]["schemas"]
    document = schemas["VerdictDocument"]
    assert document["properties"]["verdict"] == {"$ref": "#/components/schemas/Verdict"}
    published = {**document, "properties": {**document["properties"], "verdict": schemas["Verdict"]}}
    assert published == {k: v for k, v in schema().items() if k not in ("$schema", "$id")}


# --- units --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTPS://Example.COM:443/v?b=2&a=1#frag", "https://example.com/v?a=1&b=2"),
        ("http://example.com:80", "http://example.com/"),
        ("https://example.com/watch?v=abc&utm_source=tw&fbclid=1", "https://example.com/watch?v=abc"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ],
)
def test_normalize_url(a, b):
    assert jobs.normalize_url(a) == b


def test_distinct_urls_stay_distinct():
    assert jobs.normalize_url("https://e.com/v?id=1") != jobs.normalize_url("https://e.com/v?id=2")
    assert jobs.normalize_url("https://e.com/A") != jobs.normalize_url("https://e.com/a")


# --- migrations ---------------------------------------------------------------------------------------------------


def test_migrations_build_exactly_the_models(pg_url, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from server.db import get_engine, head_revision, upgrade
    from server.models import Base

    sqlite_url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(sqlite_url)
    for url in (pg_url, sqlite_url):
        engine, _ = get_engine(url)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, Base.metadata) == [], url


def test_migrations_go_down_and_up(tmp_path):
    from alembic import command
    from sqlalchemy import inspect

    from server.db import alembic_config, get_engine, upgrade

    url = f"sqlite:///{tmp_path / 'updown.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine, _ = get_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(url)
    assert {"scans", "batches", "batch_items", "api_keys"} <= set(inspect(engine).get_table_names())
