"""The typed HTTP contract (issue 10): the committed docs/openapi.json is the live spec; every POST
documents its request body, every operation its answer and its problem answers; the API-key scheme
is declared; /docs and /redoc work with no network. No Redis needed: the app connects on start."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from cli.embedded_redis import EmbeddedRedis
from schemas.api import MethodInfo, ModelInfo
from schemas.methods import CATALOG
from schemas.registry import load_registry
from schemas.settings import Settings
from service.app import create_app
from service.openapi import SPEC_PATH, live_spec, main, render
from service.routes.discovery import registry_info
from service.spec import PROBLEM_JSON, package_version

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def spec() -> dict:
    return live_spec()


@pytest.fixture(scope="module")
def client():
    # no `with`: the lifespan (the Redis connection) does not run; the docs need none
    return TestClient(create_app(Settings(redis_url="redis://127.0.0.1:1/0")))


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def test_committed_spec_is_the_live_spec(spec):
    assert SPEC_PATH.exists(), "run: python -m service.openapi --write"
    assert SPEC_PATH.read_text() == render(spec), "docs/openapi.json is stale: python -m service.openapi --write"
    assert main(["--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path, monkeypatch):
    stale = tmp_path / "openapi.json"
    stale.write_text(render({**live_spec(), "info": {"title": "old", "version": "0"}}))
    monkeypatch.setattr("service.openapi.SPEC_PATH", stale)
    assert main(["--check"]) == 1
    assert main(["--write"]) == 0 and main(["--check"]) == 0


def test_every_route_is_documented(spec):
    ops = {(path, method) for path, method, _ in operations(spec)}
    assert ops >= {
        ("/v1/explain", "post"),
        ("/v1/jobs", "post"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}", "delete"),
        ("/v1/evaluate", "post"),
        ("/v1/compare", "post"),
        ("/v1/models", "get"),
        ("/v1/methods", "get"),
        ("/v2/health/live", "get"),
        ("/v2/health/ready", "get"),
        ("/v2/models/{name}", "get"),
        ("/v2/models/{name}/ready", "get"),
        ("/metrics", "get"),
        ("/v1/models/{name}", "get"),
        ("/v1/models/{name}:explain", "post"),
    }
    assert "/docs" not in spec["paths"] and "/redoc" not in spec["paths"]


def test_every_post_declares_its_request_body(spec):
    posts = [(path, op) for path, method, op in operations(spec) if method == "post"]
    assert len(posts) == 5
    for path, op in posts:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema["$ref"].startswith("#/components/schemas/"), path
        assert schema["$ref"].rsplit("/", 1)[1] in spec["components"]["schemas"], path
        assert op["requestBody"]["required"] is True, path


def test_multipart_explain_is_declared(spec):
    for path in ("/v1/explain", "/v1/jobs"):
        form = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["image"] == {**form["properties"]["image"], "type": "string", "format": "binary"}
        assert {"model", "image", "methods"} <= set(form["required"])
        assert {"target", "outputs", "top_k", "colormap", "normalize", "reduce"} <= set(form["properties"])


def test_every_operation_has_a_success_schema_and_problem_answers(spec):
    problem_ref = {"$ref": "#/components/schemas/ProblemDetails"}
    for path, method, op in operations(spec):
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok, (path, method)
        for status in ok:
            content = op["responses"][status].get("content", {})
            assert any(c.get("schema") for c in content.values()), (path, method, status)
        errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        for status, r in errors.items():
            content = r["content"]
            assert content[PROBLEM_JSON]["schema"] == problem_ref, (path, method, status)
            if (path, status) == ("/v2/models/{name}/ready", "503"):  # a model that is not ready, too
                assert content["application/json"]["schema"]["$ref"].endswith("/ModelReadiness")
            else:
                assert "application/json" not in content, (path, method, status)
        # the door's answers, whatever the route: a slow or oversized body, the connection limit
        assert {"408", "413", "503"} <= set(errors), (path, method)
        assert errors["503"]["content"]["text/plain"] == {"schema": {"type": "string"}}, (path, method)
        if method == "post":
            assert "422" in errors, (path, method)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_authenticated_routes_declare_the_key_scheme_and_401(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {**schemes["HTTPBearer"], "type": "http", "scheme": "bearer"}
    assert schemes["APIKeyHeader"] == {**schemes["APIKeyHeader"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    open_paths = {"/v2/health/live", "/v2/health/ready", "/metrics"}
    for path, _, op in operations(spec):
        if path in open_paths:
            assert "security" not in op, path
        else:
            assert {next(iter(s)) for s in op["security"]} == {"HTTPBearer", "APIKeyHeader"}, path
            assert {"401", "429"} <= set(op["responses"]), path  # and the lockout, rate limit, quota


def test_spec_metadata(spec):
    assert spec["info"]["version"] == package_version() and re.fullmatch(r"\d+\.\d+\.\d+.*", package_version())
    assert spec["info"]["description"]
    tags = {t["name"]: t["description"] for t in spec["tags"]}
    assert set(tags) == {"explain", "jobs", "evaluate", "discovery", "health", "kserve"} and all(tags.values())
    used = {t for _, _, op in operations(spec) for t in op.get("tags", [])}
    assert used == set(tags)


def test_documented_models_fit_what_the_gateway_answers():
    for spec in CATALOG.values():
        assert MethodInfo.model_validate(spec.describe()).model_dump() == spec.describe()
    reg = load_registry()
    for entry in reg.models:
        info = registry_info(entry, reg.labels_of(entry))
        assert ModelInfo.model_validate(info).model_dump(exclude_none=True) == {
            k: v for k, v in info.items() if v is not None
        }


EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", re.I)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_local_assets_only(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "/openapi.json" in html
    assert not re.findall(r"https?://", html), re.findall(r"https?://[^\s'\"]+", html)
    assert not EXTERNAL.search(html)
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert assets and all(a.startswith("/static/docs/") for a in assets), assets
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert len(got.content) > 1000, (asset, len(got.content))


def test_openapi_json_served(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert json.loads(r.text)["paths"]["/v1/explain"]["post"]["requestBody"]


# ---- the contract's behaviour at the door (answered before the body is read) --------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """With keys, the check reads the address' wrong-key count (service.quota): a real Redis, no worker."""
    redis = EmbeddedRedis(tmp_path_factory.mktemp("keyed-redis")).start()
    app = create_app(Settings(redis_url=redis.url, api_keys="k1,k2", max_body_bytes=50_000))
    try:
        with TestClient(app) as c:
            yield c
    finally:
        redis.stop()


def test_api_key_before_the_body(keyed):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}, {"Authorization": "Bearer k3"}):
        r = keyed.post("/v1/explain", content=b"{not json", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
        assert r.headers["content-type"].startswith(PROBLEM_JSON)
    good = ({"Authorization": "Bearer k1"}, {"X-API-Key": "k2"}, {"Authorization": "Basic x", "X-API-Key": "k1"})
    for headers in good:
        r = keyed.post("/v1/explain", content=b"{not json", headers=headers)
        assert r.status_code == 422 and "not valid JSON" in r.json()["detail"], headers
    # the bearer token counts first: a wrong one is refused even next to a good X-API-Key
    both = {"Authorization": "Bearer x", "X-API-Key": "k1"}
    assert keyed.post("/v1/evaluate", json={}, headers=both).status_code == 401
    assert keyed.get("/v2/health/live").status_code == 200


def test_bodies_at_the_door(keyed):
    h = {"X-API-Key": "k1"}
    r = keyed.post("/v1/evaluate", content=b"[1, 2]", headers={**h, "content-type": "text/plain"})
    assert r.status_code == 422 and r.json()["detail"] == "body must be a JSON object"
    # JSON whatever the content type; pydantic's errors located under "body"
    r = keyed.post("/v1/explain", content=b'{"model": "m", "image": "x"}', headers=h)
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "methods"]]
    r = keyed.post(
        "/v1/explain",
        files={"image": ("a.png", b"\x89PNG", "image/png")},
        data={"model": "shapes-cnn", "methods": "[not json"},
        headers=h,
    )
    assert r.status_code == 422 and "a form field is not valid JSON" in r.json()["detail"]
    r = keyed.post("/v1/jobs", files={"image": ("a.png", b"\x89PNG", "image/png")}, data={"methods": "fem"}, headers=h)
    assert r.status_code == 422 and [e["loc"] for e in r.json()["errors"]] == [["body", "model"]]


def test_body_limit_also_for_streamed_bodies(keyed):
    def chunks():
        for _ in range(20):
            yield b"x" * 10_000

    for body in (b"x" * 60_000, chunks()):
        r = keyed.post("/v1/explain", content=body, headers={"X-API-Key": "k1"})
        assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM_JSON)
        assert "over the limit of 50000 bytes" in r.json()["detail"]
