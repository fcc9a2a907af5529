"""The gateway's hardening (issue 19), in process on the real PostgreSQL and Redis: page URLs private to their
submitter, batches charged per URL, 401 floods throttled per address, /metrics behind a token and cached, absolute
URLs from a setting, open mode only for loopback Host names, no credentials in URLs, exact tracking names, and
400 (never 500) for odd bodies."""

from __future__ import annotations

import secrets

import pytest

from server import jobs
from server.db import session_scope
from server.keys import create_key
from server.models import Scan
from tests.test_server_api import QUEUE, finished_scan, unique_url


@pytest.fixture
def redis_queue(stack_redis):
    client = stack_redis.client()
    client.delete(QUEUE)
    yield lambda: client.llen(QUEUE)
    client.delete(QUEUE)


def new_key(pg_url: str, name: str = "hardening", rate_limit: str | None = None) -> str:
    with session_scope(pg_url) as session:
        return create_key(session, name, rate_limit=rate_limit).key


def an_address() -> str:
    """A loopback client address of the test's own, so per-address counters of other tests do not interfere."""
    return f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


# --- page_url belongs to one submission ------------------------------------------------------------------------------


def test_page_url_is_never_shown_to_another_key(make_app, pg_url, redis_queue):
    c = make_app().test_client()
    alice, bob = new_key(pg_url, "alice"), new_key(pg_url, "bob")
    url, private = unique_url("shared"), "https://intranet.alice.example/private/page?id=42"
    first = c.post("/api/v1/scans", json={"url": url, "page_url": private}, headers={"X-API-Key": alice}).get_json()
    assert first["page_url"] == private
    second = c.post("/api/v1/scans", json={"url": url}, headers={"X-API-Key": bob}).get_json()
    assert second["id"] == first["id"]  # the same scan, de-duplicated ...
    assert second["page_url"] is None  # ... without Alice's page
    assert c.get(f"/api/v1/scans/{first['id']}", headers={"X-API-Key": bob}).get_json()["page_url"] is None
    assert c.get(f"/api/v1/scans/{first['id']}", headers={"X-API-Key": alice}).get_json()["page_url"] == private
    assert private not in c.get(second["report_url"]).get_data(as_text=True)
    assert private in c.get(first["report_url"]).get_data(as_text=True)  # her own report link shows it
    own = c.post(
        "/api/v1/scans", json={"url": url, "page_url": "https://bob.example/p"}, headers={"X-API-Key": bob}
    ).get_json()
    assert own["page_url"] == "https://bob.example/p"
    with session_scope(pg_url) as session:
        assert session.get(Scan, first["id"]).page_url is None  # nothing on the shared record
    assert redis_queue() == 1


def test_a_finished_scan_does_not_show_its_first_page_url(make_app, pg_url):
    scan_id = finished_scan(pg_url, unique_url("finished-page"), page_url="https://private.example/secret")
    c = make_app().test_client()
    body = c.get(f"/api/v1/scans/{scan_id}", headers={"X-API-Key": new_key(pg_url)}).get_json()
    assert body["status"] == "done" and body["page_url"] is None
    assert "private.example" not in c.get(f"/scans/{scan_id}").get_data(as_text=True)
    assert "private.example" not in c.get(f"/scans/{scan_id}?s=guessed-token").get_data(as_text=True)


# --- limits ------------------------------------------------------------------------------------------------------


def test_a_batch_is_charged_one_submission_per_url(make_app, pg_url, redis_queue):
    limited = new_key(pg_url, "limited", rate_limit="5/minute")
    c = make_app(max_batch_urls=200).test_client()
    big = c.post("/api/v1/batches", json={"urls": [unique_url() for _ in range(200)]}, headers={"X-API-Key": limited})
    assert big.status_code == 429, big.get_json()
    assert redis_queue() == 0
    fits = c.post("/api/v1/batches", json={"urls": [unique_url() for _ in range(3)]}, headers={"X-API-Key": limited})
    assert fits.status_code == 202
    statuses = [
        c.post("/api/v1/scans", json={"url": unique_url()}, headers={"X-API-Key": limited}).status_code
        for _ in range(3)
    ]
    assert statuses == [202, 202, 429]  # 3 + 2 = the 5 of the minute
    assert redis_queue() == 5


def test_unknown_keys_are_throttled_per_address_before_any_lookup(make_app, pg_url, monkeypatch):
    from server import auth

    c = make_app(auth_failure_limit="5/minute").test_client()
    address = an_address()
    lookups = []
    real_find = auth.find_key
    monkeypatch.setattr(auth, "find_key", lambda session, raw: lookups.append(raw) or real_find(session, raw))
    statuses = [
        c.get("/api/v1/scans/x", headers={"X-API-Key": f"msk_{i}"}, environ_base={"REMOTE_ADDR": address}).status_code
        for i in range(8)
    ]
    assert statuses == [401] * 5 + [429] * 3
    assert len(lookups) == 5  # the throttled requests never reached the database
    assert c.get("/api/v1/scans/x", environ_base={"REMOTE_ADDR": address}).status_code == 429  # no key at all
    other = c.get("/api/v1/scans/x", headers={"X-API-Key": "msk_other"}, environ_base={"REMOTE_ADDR": an_address()})
    assert other.status_code == 401  # another address has its own budget
    good = new_key(pg_url)
    assert (
        c.get("/api/v1/scans/x", headers={"X-API-Key": good}, environ_base={"REMOTE_ADDR": an_address()}).status_code
        == 404
    )


def test_a_flood_of_unknown_keys_does_not_wipe_the_key_cache(make_app, pg_url, monkeypatch):
    from server import auth

    monkeypatch.setattr(auth, "key_cache", auth.KeyCache(unknown=50))
    c = make_app(auth_failure_limit="100000/minute").test_client()
    good = new_key(pg_url)
    assert c.get("/api/v1/scans/x", headers={"X-API-Key": good}).status_code == 404
    for i in range(120):
        c.get("/api/v1/scans/x", headers={"X-API-Key": f"msk_flood_{i}"})
    assert len(auth.key_cache) <= 51
    looked_up = []
    monkeypatch.setattr(auth, "find_key", lambda session, raw: looked_up.append(raw))
    assert c.get("/api/v1/scans/x", headers={"X-API-Key": good}).status_code == 404
    assert looked_up == [], "the known key was evicted by unknown ones"


# --- /metrics and /readyz -------------------------------------------------------------------------------------------


def test_metrics_need_the_token(make_app):
    app = make_app(metrics_token="s3cret-token")
    c = app.test_client()
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = c.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and "mesoscan_http_requests_total" in ok.get_data(as_text=True)
    assert make_app(metrics_token=None).test_client().get("/metrics").status_code == 403  # no token set: closed


def test_metrics_and_readyz_read_the_system_at_most_once_per_interval(make_app, monkeypatch):
    from sqlalchemy import event

    from server.db import get_engine

    app = make_app(metrics_token="t", metrics_cache_s=60, queue=f"mesoscan.metrics-{secrets.token_hex(4)}")
    engine, _ = get_engine(app.config["MESOSCAN"].database_url)
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        c = app.test_client()
        for _ in range(20):
            assert c.get("/metrics", headers={"Authorization": "Bearer t"}).status_code == 200
        for _ in range(20):
            assert c.get("/readyz").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    group_bys = [s for s in statements if "GROUP BY" in s]
    assert len(group_bys) == 1, f"{len(group_bys)} GROUP BY queries for 20 scrapes"
    assert len([s for s in statements if s.strip() == "SELECT 1"]) <= 1


# --- absolute URLs and the Host header ------------------------------------------------------------------------------


def test_absolute_urls_come_from_the_public_url_not_the_host_header(make_app, pg_url, redis_queue):
    key = new_key(pg_url)
    c = make_app(public_url="https://scan.example.org").test_client()
    r = c.post("/api/v1/scans", json={"url": unique_url()}, headers={"X-API-Key": key, "Host": "evil.example"})
    body = r.get_json()
    assert r.headers["Location"] == body["status_url"] == f"https://scan.example.org/api/v1/scans/{body['id']}"
    assert body["report_url"] == f"https://scan.example.org/scans/{body['id']}"
    plain = (
        make_app()
        .test_client()
        .post("/api/v1/scans", json={"url": unique_url()}, headers={"X-API-Key": key, "Host": "evil.example"})
    )
    assert "evil.example" not in plain.headers["Location"] and "evil.example" not in plain.get_data(as_text=True)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "10.0.0.1"])
def test_open_mode_refuses_requests_for_other_host_names(make_app, redis_queue, host):
    c = make_app(open_mode=True).test_client()
    r = c.post("/api/v1/scans", json={"url": unique_url()}, headers={"Host": host})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden_host"
    assert c.get("/", headers={"Host": host}).status_code == 403
    assert redis_queue() == 0
    for good in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost"):
        assert c.post("/api/v1/scans", json={"url": unique_url()}, headers={"Host": good}).status_code == 202


# --- URLs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["url", "page_url"])
def test_urls_with_credentials_are_refused(make_app, pg_url, redis_queue, field):
    body = {"url": unique_url()}
    body[field] = "https://user:pa55word@videos.example/v.mp4"
    r = make_app().test_client().post("/api/v1/scans", json=body, headers={"X-API-Key": new_key(pg_url)})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_url"
    assert "pa55word" not in r.get_data(as_text=True)
    assert redis_queue() == 0


def test_signed_urls_of_different_videos_stay_distinct():
    for name in ("sig", "signature", "size", "site", "sid", "sidx", "Signature"):
        a = jobs.normalize_url(f"https://cdn.example/v.mp4?{name}=aaa")
        b = jobs.normalize_url(f"https://cdn.example/v.mp4?{name}=bbb")
        assert a != b, name
    tracked = "https://e.com/w?v=1&si=xyz&utm_source=a&utm_campaign=b&fbclid=c&gclid=d"
    assert jobs.normalize_url(tracked) == "https://e.com/w?v=1"


# --- never a 500 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_url", ["http://[", "http://[::1", "https://a.example:99999/x", "http://a.example:x/"])
def test_a_malformed_page_url_is_400(make_app, pg_url, page_url):
    r = (
        make_app()
        .test_client()
        .post(
            "/api/v1/scans",
            json={"url": "https://a.example/v", "page_url": page_url},
            headers={"X-API-Key": new_key(pg_url)},
        )
    )
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "invalid_url"


@pytest.mark.parametrize("path", ["/api/v1/scans", "/api/v1/batches"])
def test_deeply_nested_json_is_400(make_app, pg_url, path):
    body = "[" * 30_000 + "]" * 30_000  # 60 KB: under the size limit
    r = (
        make_app()
        .test_client()
        .post(path, data=body, content_type="application/json", headers={"X-API-Key": new_key(pg_url)})
    )
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert r.get_json()["error"]["code"] == "invalid_request"
