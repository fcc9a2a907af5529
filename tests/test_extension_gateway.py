"""What the gateway does for the browser extension: `GET /api/v1/models` (documented in the OpenAPI document) and
CORS for the extension's origins (`MESOSCAN_EXTENSION_ORIGIN`, a list; any unpacked extension under `serve --dev`),
never with credentials. Flask's test client on the real PostgreSQL and Redis of the test stack."""

from __future__ import annotations

import pytest

from server.db import session_scope
from server.keys import create_key
from tests.conftest import DEFAULT_MODEL

CHROME = "chrome-extension://abcdefghijklmnopabcdefghijklmnop"
FIREFOX = "moz-extension://0b5f3a5e-1c1d-4e4e-9a9a-123456789abc"


@pytest.fixture
def key(pg_url) -> str:
    with session_scope(pg_url) as session:
        return create_key(session, "extension gateway tests").key


def preflight(client, origin: str, path: str = "/api/v1/scans"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
    )


def test_models_lists_the_registry_with_the_default_marked(make_app, key, settings):
    import jsonschema

    from server.openapi import document
    from serving.registry import list_models

    r = make_app().test_client().get("/api/v1/models", headers={"X-API-Key": key})
    assert r.status_code == 200
    body = r.get_json()
    specs = {spec.name: spec for spec in list_models(settings)}
    assert [m["name"] for m in body["models"]] == list(specs)
    assert body["default"] == DEFAULT_MODEL
    assert [m["name"] for m in body["models"] if m["default"]] == [DEFAULT_MODEL]
    for model in body["models"]:
        spec = specs[model["name"]]
        assert (model["version"], model["threshold"], model["licence"]) == (spec.version, spec.threshold, spec.licence)
        expected = (
            "ensemble" if spec.is_ensemble else {"meso4": "Meso-4", "mesoinception4": "MesoInception-4"}[spec.arch]
        )
        assert model["architecture"] == expected
        assert model["members"] == list(spec.members)
    # the answer is what the OpenAPI document says it is
    spec = document()
    schema = {**spec["components"]["schemas"]["ModelList"], "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)
    operation = spec["paths"]["/api/v1/models"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelList")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({"models": [{"name": "x"}], "default": "x"})


def test_the_scans_the_extension_reads_follow_the_verdict_schema(make_app, key, pg_url):
    """The answers the extension reads (a cached POST /api/v1/scans, GET /api/v1/scans/<id> for a done and a failed
    scan) are the OpenAPI document's `Scan`, their `result` the scanner's verdict schema."""
    import jsonschema
    import numpy as np

    from scanner.document import VideoSource
    from scanner.verdict import ScoredFace, build_document, failed_document, validate
    from server import jobs
    from server.openapi import document

    client = make_app(extension_origin=CHROME).test_client()
    headers = {"Origin": CHROME, "X-API-Key": key}
    models = client.get("/api/v1/models", headers=headers).get_json()["models"]
    version = next(m["version"] for m in models if m["name"] == DEFAULT_MODEL)
    urls = [f"https://videos.example/extension/{jobs.new_id()}.mp4" for _ in range(2)]
    ids = []
    for url in urls:
        with session_scope(pg_url) as session:
            scan = jobs.submit(
                session, url=url, page_url=None, model=DEFAULT_MODEL, version=version, api_key_id=None, cache_ttl_s=0
            ).scan
        ids.append(scan.id)
    faces = [
        ScoredFace(
            t=t, frame=i, person=0, box=(8, 8, 64, 64), fake_probability=0.8, image=np.zeros((256, 256, 3), "uint8")
        )
        for i, t in enumerate((0.0, 0.5))
    ]
    source = {**VideoSource.unknown(urls[0]).to_dict(), "duration_s": 1.0, "width": 320, "height": 240, "fps": 25.0}
    done = build_document(
        source=source,
        model={"name": DEFAULT_MODEL, "version": version, "backend": "embedded"},
        threshold=0.5,
        band=0.1,
        faces=faces,
        frame_times=[0.0, 0.5],
        faces_skipped=0,
        keyframes=False,
        top=1,
        timings_ms={"total": 10.0},
    )
    failed = failed_document(source=VideoSource.unknown(urls[1]), model=None, code="too_long", message="long")
    with session_scope(pg_url) as session:
        assert jobs.finish(session, ids[0], done) and jobs.finish(session, ids[1], failed)

    spec = document()
    scan_schema = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/Scan", "components": spec["components"]}
    )
    cached = client.post("/api/v1/scans", json={"url": urls[0]}, headers=headers)
    assert cached.status_code == 200 and cached.headers.get("Access-Control-Allow-Origin") == CHROME
    answers = [cached.get_json()] + [client.get(f"/api/v1/scans/{i}", headers=headers).get_json() for i in ids]
    assert [a["result"]["status"] for a in answers] == ["done", "done", "failed"]
    for answer in answers:
        scan_schema.validate(answer)
        validate(answer["result"])
    assert answers[1]["result"]["verdict"]["label"] == "fake" and answers[2]["result"]["error"]["code"] == "too_long"
    with pytest.raises(jsonschema.ValidationError):
        scan_schema.validate({**answers[1], "result": {**answers[1]["result"], "top_faces": [{"t": 0}]}})


def test_models_needs_a_key_unless_open_mode(make_app):
    assert make_app().test_client().get("/api/v1/models").status_code == 401
    assert make_app(open_mode=True).test_client().get("/api/v1/models").status_code == 200


def test_extension_origin_takes_a_list_and_no_credentials(make_app, key):
    client = make_app(extension_origin=f"{CHROME}, {FIREFOX}/").test_client()
    for origin in (CHROME, FIREFOX):
        pre = preflight(client, origin)
        assert pre.headers.get("Access-Control-Allow-Origin") == origin
        assert "x-api-key" in pre.headers.get("Access-Control-Allow-Headers", "").lower()
        assert "Access-Control-Allow-Credentials" not in pre.headers
        got = client.get("/api/v1/models", headers={"Origin": origin, "X-API-Key": key})
        assert got.status_code == 200 and got.headers.get("Access-Control-Allow-Origin") == origin
        assert "Access-Control-Allow-Credentials" not in got.headers
        assert client.get("/healthz", headers={"Origin": origin}).headers.get("Access-Control-Allow-Origin") == origin
        # errors carry CORS too, so the extension can read them (401 without a key, with its words)
        denied = client.get("/api/v1/models", headers={"Origin": origin})
        assert denied.status_code == 401 and denied.headers.get("Access-Control-Allow-Origin") == origin
    other = client.get(
        "/api/v1/models", headers={"Origin": "chrome-extension://ponmlkjihgfedcbaponmlkjihgfedcba", "X-API-Key": key}
    )
    assert "Access-Control-Allow-Origin" not in other.headers


def test_dev_mode_lets_any_unpacked_extension_in_and_nothing_else(make_app):
    from server.dev import dev_settings

    dev = dev_settings(make_app().config["MESOSCAN"])  # its in-memory broker stays out: the stack's Redis serves
    client = make_app(open_mode=dev.open_mode, cors_origins=dev.cors_origins).test_client()
    for origin in (CHROME, FIREFOX):
        assert preflight(client, origin).headers.get("Access-Control-Allow-Origin") == origin
        got = client.get("/api/v1/models", headers={"Origin": origin})  # open mode: no key
        assert got.status_code == 200 and got.headers.get("Access-Control-Allow-Origin") == origin
        assert "Access-Control-Allow-Credentials" not in got.headers
    for origin in (
        "https://evil.example",
        "chrome-extension://short",
        f"{CHROME}.evil.example",
        "moz-extension://not-a-uuid",
        "http://127.0.0.1:8000",
    ):
        assert "Access-Control-Allow-Origin" not in preflight(client, origin).headers, origin
    # without --dev, an extension needs MESOSCAN_EXTENSION_ORIGIN
    plain = make_app().test_client()
    assert "Access-Control-Allow-Origin" not in preflight(plain, CHROME).headers
