"""Auth and abuse at the door, with real processes (issue 11, item 5): a stack of its own (embedded Redis,
one worker, the demo model only) and gateways started with the settings each test needs. Hashed and
plain keys, the lockout after wrong keys, the rate limit, the per-key job quota, a chunked body over the
limit, deep JSON, slow clients, the connection limit, 405 with Allow, no Server header, and a registry
that names a disallowed architecture or an escaping file."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from cli.embedded_redis import free_port
from schemas import queue as q
from schemas.registry import load_registry
from schemas.settings import Settings
from service.app import create_app
from service.bodies import json_depth
from service.keys import hash_key, key_is_valid, new_key, parse_hash
from service.problems import scrub
from tests.conftest import DEMO_ENTRY, ROOT, WEIGHTS, Stack, write_demo_registry
from tests.helpers import png_b64, random_image

pytestmark = pytest.mark.integration

MODEL = "shapes-cnn"
IMAGE = png_b64(random_image(64, 64))
EXPLAIN = {"model": MODEL, "image": IMAGE, "methods": ["gradcam"], "outputs": ["array"]}
PLAIN, HASHED = new_key(), new_key()


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    if not WEIGHTS.exists():
        pytest.fail(f"the demo model's weights are missing: {WEIGHTS} (run `make train`)")
    tmp = tmp_path_factory.mktemp("door")
    s = Stack(tmp, registry=write_demo_registry(tmp))
    yield s
    s.stop()


def gateway(stack: Stack, **env: str | int | float) -> str:
    """A gateway process of the stack with these settings (WHITEBOX_<NAME>), ready."""
    port = free_port()
    stack.start_gateway(port, {f"WHITEBOX_{k.upper()}": str(v) for k, v in env.items()})
    url = f"http://127.0.0.1:{port}"
    stack.wait_ready(url, timeout=60)
    return url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(r: httpx.Response, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status
    for w in words:
        assert w in body["detail"], body
    return body


def test_key_hash_format():
    h = hash_key("abc", salt="s1")
    salt, digest = parse_hash(h)
    assert h.startswith("sha256$s1$") and salt == "s1" and len(digest) == 64
    assert hash_key("abc", salt="s1") == h and hash_key("abc") != h  # a fresh salt each time
    assert key_is_valid("abc", [], [h]) and not key_is_valid("abd", [], [h])
    assert not key_is_valid("abc", [], ["sha256$bad"])  # a malformed hash never matches
    with pytest.raises(ValueError, match="expected sha256"):
        parse_hash("md5$x$y")
    with pytest.raises(SystemExit, match="WHITEBOX_API_KEY_HASHES: .* expected sha256"):  # refused at start
        create_app(Settings(redis_url="redis://127.0.0.1:1/0", api_key_hashes="sha256$salt$short"))


def test_hash_key_command():
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "hash-key"], input="k-123\n", capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert key_is_valid("k-123", [], [out.stdout.strip()])
    new = subprocess.run(
        [sys.executable, "-m", "cli.main", "hash-key", "--new"], capture_output=True, text=True, cwd=ROOT
    )
    lines = dict(line.split(":", 1) for line in new.stdout.strip().splitlines())
    assert key_is_valid(lines["key"].strip(), [], [lines["hash"].strip()])


def test_hashed_and_plain_keys(door):
    url = gateway(door, api_keys=PLAIN, api_key_hashes=hash_key(HASHED), auth_failures_per_min=1000)
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/v1/methods", headers=bearer(HASHED)).status_code == 200
        assert c.get("/v1/methods", headers={"X-API-Key": PLAIN}).status_code == 200
        r = c.post("/v1/explain", json=EXPLAIN, headers={"X-API-Key": HASHED})
        assert r.status_code == 200, r.text
        assert_problem(c.get("/v1/methods", headers=bearer(HASHED + "x")), 401, "API key")
        assert_problem(c.get("/v1/methods"), 401)
        assert c.get("/v2/health/live").status_code == 200  # the probes stay open


def test_wrong_keys_lock_the_address_out(door):
    url = gateway(door, api_key_hashes=hash_key(HASHED), auth_failures_per_min=5)
    r_ = redis.Redis.from_url(door.redis.url)
    r_.delete(q.auth_failures_key("127.0.0.1"))  # the wrong keys of the other tests
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(5):
                assert_problem(c.get("/v1/models", headers=bearer(f"guess-{i}")), 401)
            locked = assert_problem(c.get("/v1/models", headers=bearer("guess-5")), 429, "wrong API keys")
            r = c.get("/v1/models", headers=bearer(HASHED))  # the right key too, from this address
            assert_problem(r, 429)
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert locked["type"].endswith("/too-many-requests")
            # the count lives in Redis under the address (never a key); gone, the address may try again
            assert int(r_.get(q.auth_failures_key("127.0.0.1")) or 0) == 5
            r_.delete(q.auth_failures_key("127.0.0.1"))
            assert c.get("/v1/models", headers=bearer(HASHED)).status_code == 200
    finally:
        r_.delete(q.auth_failures_key("127.0.0.1"))


def test_rate_limit_429_then_recovers(door):
    url = gateway(door, api_keys=PLAIN, rate_limit_rps=1, rate_limit_burst=3)
    with httpx.Client(base_url=url, timeout=30) as c:
        codes = [c.get("/v1/methods", headers=bearer(PLAIN)).status_code for _ in range(4)]
        assert codes[:3] == [200, 200, 200]
        r = c.get("/v1/methods", headers=bearer(PLAIN))
        assert_problem(r, 429, "rate limit")
        retry = int(r.headers["retry-after"])
        assert 1 <= retry <= 2
        # the bucket is the key's hash, never the key
        names = [k.decode() for k in redis.Redis.from_url(door.redis.url).keys(q.rate_key("*"))]
        assert names and all(PLAIN not in n for n in names)
        time.sleep(retry + 0.1)
        assert c.get("/v1/methods", headers=bearer(PLAIN)).status_code == 200


def test_job_quota_per_key(door):
    other = new_key()
    url = gateway(door, api_keys=f"{PLAIN},{other}", max_jobs_per_key=2)
    door.worker.send_signal(signal.SIGSTOP)  # the jobs stay queued
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            ids = []
            for _ in range(2):
                r = c.post("/v1/jobs", json=EXPLAIN, headers=bearer(PLAIN))
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            r = c.post("/v1/jobs", json=EXPLAIN, headers=bearer(PLAIN))
            assert_problem(r, 429, "quota is 2")
            assert int(r.headers["retry-after"]) >= 1
            assert c.post("/v1/jobs", json=EXPLAIN, headers=bearer(other)).status_code == 202  # its own quota
    finally:
        door.worker.send_signal(signal.SIGCONT)
    with httpx.Client(base_url=url, timeout=30) as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [c.get(f"/v1/jobs/{i}", headers=bearer(PLAIN)).json()["status"] for i in ids]
            if all(s == "done" for s in states):
                break
            time.sleep(0.2)
        assert states == ["done", "done"]
        assert c.post("/v1/jobs", json=EXPLAIN, headers=bearer(PLAIN)).status_code == 202  # room again


def raw_request(port: int, head: bytes, chunks, timeout: float = 30.0) -> bytes:
    """Send ``head`` then each chunk until the server answers; the answer (b'' when it closed silently)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        for chunk in chunks:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(chunk)
            except OSError:
                break
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except OSError:
                break
            if not part:
                break
            data += part
        return data


def test_chunked_body_over_the_limit_is_413(door):
    """25 MB sent chunked (no Content-Length) to a 3 MB limit: 413 before the rest is read."""
    port = door.port
    head = (
        b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"a" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    sent = []

    def chunks():
        for _ in range(25 * 16):
            sent.append(1)
            yield chunk

    answer = raw_request(port, head, chunks())
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["type"].endswith("/payload-too-large") and "over the limit" in body["detail"]
    assert len(sent) < 25 * 16  # refused before all of it was sent
    assert httpx.get(door.url + "/v2/health/live").status_code == 200


def test_deep_json_is_422_and_the_connection_answers(door):
    with httpx.Client(base_url=door.url, timeout=30) as c:
        r = c.post("/v1/explain", content=b"[" * 1000 + b"]" * 1000, headers={"content-type": "application/json"})
        assert_problem(r, 422, "nested deeper than 32")
        deep = {"model": MODEL, "image": IMAGE, "methods": [{"name": "gradcam", "params": {}}]}
        node: dict = deep["methods"][0]["params"]
        for _ in range(40):
            node["x"] = {}
            node = node["x"]
        assert_problem(c.post("/v1/explain", json=deep), 422, "nested deeper")
        form = {"model": MODEL, "methods": "[" * 100 + "]" * 100}
        files = {"image": ("x.png", b"\x89PNG", "image/png")}
        assert_problem(c.post("/v1/explain", data=form, files=files), 422, "nested deeper")
        # brackets inside strings do not count
        ok = c.post("/v1/explain", json={**EXPLAIN, "methods": ["gradcam"], "model": MODEL + "[" * 100})
        assert_problem(ok, 404, "unknown model")
        assert c.get("/v2/health/live").status_code == 200


def test_slow_clients_are_cut_off(door):
    url = gateway(door, header_timeout_s=2, body_timeout_s=3)
    port = int(url.rsplit(":", 1)[1])

    def drip(data: bytes):
        for b in data:
            yield bytes([b])
            time.sleep(2.0)  # 1 byte every 2 s

    t0 = time.monotonic()
    assert raw_request(port, b"G", drip(b"ET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")) == b""
    assert time.monotonic() - t0 < 2 + 2 + 3  # closed within the header timeout (and a drip's step)

    head = b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    t0 = time.monotonic()
    answer = raw_request(port, head, drip(b"{" * 100))
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"connection: close" in answer.lower()
    assert b"not received within 3 s" in answer
    assert time.monotonic() - t0 < 3 + 2 + 3
    # the deadline is the body's: a request whose answer takes longer than body_timeout_s still gets it
    door.worker.send_signal(signal.SIGSTOP)
    timer = threading.Timer(4.0, door.worker.send_signal, (signal.SIGCONT,))
    timer.start()
    try:
        r = httpx.post(url + "/v1/explain", json=EXPLAIN, timeout=60)
    finally:
        timer.join()
        door.worker.send_signal(signal.SIGCONT)
    assert r.status_code == 200, r.text


def test_connection_limit_answers_503(door):
    url = gateway(door, max_connections=4)
    port = int(url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        for s in held:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # half-sent headers
        r = httpx.get(url + "/v2/health/live", timeout=10)
        assert r.status_code == 503
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(url + "/v2/health/live", timeout=10).status_code != 200:
        time.sleep(0.2)
    assert httpx.get(url + "/v2/health/live", timeout=10).status_code == 200


def test_405_has_allow_and_no_server_header(door):
    with httpx.Client(base_url=door.url, timeout=30) as c:
        r = c.delete("/v1/explain")
        assert_problem(r, 405)
        assert r.headers["allow"] == "POST"
        r = c.post("/v1/models")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        r = c.put("/v1/jobs/abc")  # two routes on the path: both methods
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
        for r in (c.get("/v2/health/live"), c.get("/v1/models"), c.get("/nowhere"), c.delete("/v1/explain")):
            assert "server" not in r.headers


def write_registry(tmp: Path, **changes: object) -> Path:
    path = tmp / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": [{**DEMO_ENTRY, **changes}]}))
    return path


def test_registry_allow_list_and_folders(tmp_path):
    strict = Settings(redis_url=None)
    with pytest.raises(SystemExit, match="model 'shapes-cnn': architecture 'os:system' is not under an allowed"):
        load_registry(write_registry(tmp_path, architecture="os:system"), strict)
    outside = tmp_path.parent / "elsewhere.safetensors"
    outside.write_bytes(b"x")
    for weights in ("../elsewhere.safetensors", str(outside)):
        with pytest.raises(SystemExit, match="'shapes-cnn': weights .* lies outside the registry's folder"):
            load_registry(write_registry(tmp_path, weights=weights), strict)
    with pytest.raises(SystemExit, match="labels_file '../../../../etc/passwd' lies outside"):
        load_registry(write_registry(tmp_path, labels_file="../../../../etc/passwd", labels=None), strict)
    # allowed: the registry's folder, the committed weights, another prefix or any path when configured
    (tmp_path / "w.safetensors").write_bytes(b"x")
    assert load_registry(write_registry(tmp_path, weights="w.safetensors"), strict).models[0].weights
    assert load_registry(write_registry(tmp_path), strict).models[0].weights == str(WEIGHTS)
    relaxed = Settings(redis_url=None, registry_any_path=True, registry_architectures=("whitebox.", "os:"))
    assert load_registry(write_registry(tmp_path, weights=str(outside), architecture="os:system"), relaxed)
    load_registry(None, strict)  # the bundled registry passes the default rules


def test_gateway_refuses_a_bad_registry(door, tmp_path):
    reg = write_registry(tmp_path, architecture="subprocess:run")
    env = {**door.env, "WHITEBOX_MODELS": str(reg), "WHITEBOX_PORT": str(free_port())}
    out = subprocess.run(
        [sys.executable, "-m", "service"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "architecture 'subprocess:run' is not under an allowed module prefix" in out.stdout + out.stderr


def test_answers_never_show_heap_addresses_or_source_paths():
    leaky = {
        "detail": 'cannot identify image file <_io.BytesIO object at 0x7f3a2b1c9e50> (File "/srv/app/common/images.py",'
        " line 12)",
        "errors": [{"loc": ["body", "image"], "msg": "bad <object at 0xdeadbeef>"}],
    }
    clean = scrub(leaky)
    assert "0x" not in json.dumps(clean) and "images.py" not in clean["detail"] and "/srv" not in clean["detail"]
    assert clean["detail"].startswith("cannot identify image file <_io.BytesIO object>")
    assert scrub({"detail": "unknown model 'a/b'"}) == {"detail": "unknown model 'a/b'"}  # client text stays


def test_json_depth_counts_brackets_outside_strings():
    assert json_depth(b"[" * 1000 + b"]" * 1000, 32) == 33  # counted up to the limit + 1, no recursion
    assert json_depth(json.dumps({"a": "[" * 100, "b": '\\"[[' * 30, "c": [[{}]]}).encode(), 32) == 4
    assert json_depth(json.dumps([[[[1]]]]).encode(), 3) == 4
    assert json_depth(b'{"image": "' + b"A" * 1_000_000 + b'"}', 32) <= 32
