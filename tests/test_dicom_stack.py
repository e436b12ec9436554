"""DICOM through the real stack (issue 12 items 2 and 3, "done when" 1; docs/dicom.md): lesion images
written as real 12-bit DICOM files (rescale intercept, window tags, MONOCHROME1/2, RLE and JPEG 2000
lossless) served as JSON base64 and multipart files; the same image as 8-bit PNG, 16-bit PNG and DICOM
gets the same prediction and maps; frames and a request window; and PHI never leaves the request (logs,
every Redis command and key, every response searched for the planted patient data)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import signal
import threading
import time

import httpx
import numpy as np
import pydicom
import pytest
import redis
import yaml
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from schemas.queue import decode_job
from schemas.registry import load_registry
from tests.conftest import Stack
from tests.dicom_files import GREY8_WINDOW, grey8_to_dicom
from tests.helpers import png_bytes
from workers.models import WEIGHTS_DIR
from workers.training.lesions import generate

PHI = {
    "patient_name": "Hidden^Person^Xk4",
    "patient_id": "PID-Xk4-90311",
    "birth_date": "19230817",
    "institution": "Xk4 Memorial Infirmary",
    "referring_physician": "Referrer^Doctor^Xk4",
    "private_value": "Xk4 private remark",
}
SECRETS = [v.encode() for v in PHI.values()] + [b"Hidden^Person"]
METHODS = [
    "saliency",
    {"name": "integrated_gradients", "params": {"steps": 8}},
    "gradcam",
    "lrp",
]


class DebugStack(Stack):
    """The test stack with every process logging at DEBUG (the most a log can hold)."""

    def _spawn(self, args, name, extra=None):
        return super()._spawn(args, name, {"WHITEBOX_LOG_LEVEL": "DEBUG", **(extra or {})})


@pytest.fixture(scope="module")
def dstack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dicom-stack")
    e = load_registry().get("lesion-cnn").model_dump(mode="json", exclude_none=True)
    e["weights"] = str(WEIGHTS_DIR / "lesion-cnn.safetensors")
    e["labels_file"] = str(WEIGHTS_DIR / "lesion-cnn.labels.txt")
    (tmp / "registry.yaml").write_text(yaml.safe_dump({"models": [e]}))
    s = DebugStack(tmp, tmp / "registry.yaml")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def dclient(dstack):
    with httpx.Client(base_url=dstack.url, timeout=180) as c:
        yield c


@pytest.fixture(scope="module")
def images():
    b = generate(4, 60)
    pos = b.images[int(np.argmax(b.labels))]
    neg = b.images[int(np.argmin(b.labels))]
    return pos, neg


def dicom(img8: np.ndarray, **kw) -> bytes:
    """A lesion image as a 12-bit stored DICOM (stored 8 + 16 k, intercept -1024, the file's window giving
    back k), carrying the planted patient data."""
    return grey8_to_dicom(img8, **PHI, **kw)


def png16(img8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(img8.astype(np.uint16) * 257)
    assert im.mode == "I;16"
    im.save(buf, format="PNG")
    return buf.getvalue()


def explain(client, data: bytes, multipart: bool = False, **fields):
    body = {"model": "lesion-cnn", "methods": METHODS, "outputs": ["array"], "normalize": "none", **fields}
    if multipart:  # JSON text for the lists, the number's text for the rest
        form = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in body.items()}
        return client.post("/v1/explain", data=form, files={"image": ("x.dcm", data, "application/dicom")})
    return client.post("/v1/explain", json={**body, "image": base64.b64encode(data).decode()})


def maps(r) -> dict[str, np.ndarray]:
    out = {}
    for e in r.json()["explanations"]:
        a = e["array"]
        out[e["method"]] = np.frombuffer(base64.b64decode(a["data"]), dtype="<f4").reshape(a["shape"])
    return out


def scores(r) -> dict[int, float]:
    return {c["class_index"]: c["score"] for c in r.json()["prediction"]["top_k"]}


def assert_same(r, ref, what: str) -> None:
    assert r.status_code == 200, (what, r.text[:400])
    assert r.json()["prediction"]["class_index"] == ref.json()["prediction"]["class_index"], what
    s, t = scores(r), scores(ref)
    assert s.keys() == t.keys() and all(abs(s[k] - t[k]) <= 1e-5 for k in s), (what, s, t)
    m, n = maps(r), maps(ref)
    assert m.keys() == n.keys() == {"saliency", "integrated_gradients", "gradcam", "lrp"}, what
    for k in m:
        rng = float(n[k].max() - n[k].min()) or 1.0
        assert float(np.abs(m[k] - n[k]).max()) <= 1e-4 * rng, (what, k)


# ---- 1. served end to end ----------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize(
    "photometric,ts",
    [
        ("MONOCHROME2", ExplicitVRLittleEndian),
        ("MONOCHROME1", ExplicitVRLittleEndian),
        ("MONOCHROME2", RLELossless),
        ("MONOCHROME1", JPEG2000Lossless),
    ],
)
@pytest.mark.parametrize("multipart", [False, True], ids=["json", "multipart"])
def test_lesion_dicom_served_end_to_end(dclient, images, photometric, ts, multipart):
    pos, _ = images
    ref = explain(dclient, png_bytes(pos))
    r = explain(dclient, dicom(pos, photometric=photometric, transfer_syntax=ts), multipart=multipart)
    assert_same(r, ref, f"{photometric} {ts.name} multipart={multipart}")
    info = r.json()["image"]
    assert info["format"] == "DICOM" and info["mode"] == photometric and info["bits"] == 12
    assert info["window"] == {"center": GREY8_WINDOW[0], "width": GREY8_WINDOW[1], "source": "file"}
    assert info["rescale_slope"] == 1.0 and info["rescale_intercept"] == -1024.0
    assert info["inverted"] is (photometric == "MONOCHROME1")
    assert ref.json()["image"]["format"] == "PNG" and ref.json()["image"].get("window") is None


# ---- 2. done when: 8-bit PNG, 16-bit PNG, DICOM (both) give the same answer ---------------------
@pytest.mark.integration
def test_same_prediction_and_maps_for_png8_png16_and_dicom(dclient, images):
    for img in images:
        ref = explain(dclient, png_bytes(img))
        assert ref.status_code == 200, ref.text[:300]
        r16 = explain(dclient, png16(img))
        assert r16.json().get("image", {}).get("mode") == "I;16", r16.text[:300]
        assert_same(r16, ref, "16-bit PNG")
        for pi in ("MONOCHROME2", "MONOCHROME1"):
            assert_same(explain(dclient, dicom(img, photometric=pi)), ref, pi)
    # the two images differ in their answers: the comparison can tell images apart
    a, b = (explain(dclient, png_bytes(i)) for i in images)
    assert a.json()["prediction"]["class_index"] != b.json()["prediction"]["class_index"]


# ---- 3. frames and a request window ------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("multipart", [False, True], ids=["json", "multipart"])
def test_frame_of_a_multi_frame_file(dclient, images, multipart):
    pos, neg = images
    data = dicom(np.stack([neg, pos, neg]))
    for frame, img in ((1, pos), (2, neg)):
        r = explain(dclient, data, multipart=multipart, frame=frame)
        assert_same(r, explain(dclient, png_bytes(img)), f"frame {frame}")
        assert r.json()["image"]["frame"] == frame and r.json()["image"]["frames"] == 3
    r = explain(dclient, data, multipart=multipart)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "frame" in r.text and "3 frames" in r.json()["detail"]


@pytest.mark.integration
def test_request_window_overrides_the_files(dclient, images):
    """Modality values 16 k - 1016; the window (2044.5, 2041) maps them to 2 k - 255 clipped to [0, 255]."""
    pos, _ = images
    expected = np.clip(2 * pos.astype(np.int64) - 255, 0, 255).astype(np.uint8)
    data = dicom(pos)
    r = explain(dclient, data, window_center=2044.5, window_width=2041)
    assert_same(r, explain(dclient, png_bytes(expected)), "request window")
    assert r.json()["image"]["window"] == {"center": 2044.5, "width": 2041.0, "source": "request"}
    assert scores(r) != scores(explain(dclient, data))  # the override changed the input


# ---- 4. PHI never leaves the request -----------------------------------------------------------
B64_RUN = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def decoded_runs(text: bytes) -> list[bytes]:
    """Every base64 run in ``text`` decoded (at each of the 4 alignments, in case a run starts early)."""
    out = []
    for m in B64_RUN.finditer(text):
        run = m.group()
        for k in range(4):
            s = run[k:].rstrip(b"=")
            s = s[: len(s) - len(s) % 4] if len(s) % 4 == 1 else s
            try:
                out.append(base64.b64decode(s + b"=" * (-len(s) % 4)))
            except (binascii.Error, ValueError):
                pass
    return out


def leaks(text: bytes, secrets: list[bytes]) -> list[bytes]:
    """The secrets found in ``text`` as it is or inside any base64 run of it."""
    hay = [text, *decoded_runs(text)]
    return [s for s in secrets if any(s in h for h in hay)]


class Monitor:
    """Every command Redis receives while running (MONITOR), as text."""

    STOP = "whitebox-monitor-stop"

    def __init__(self, url: str):
        self.r = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self.started = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        assert self.started.wait(10)

    def _run(self) -> None:
        with self.r.monitor() as m:
            self.started.set()
            for cmd in m.listen():
                self.lines.append(cmd["command"])
                if self.STOP in cmd["command"]:
                    return

    def stop(self) -> bytes:
        time.sleep(0.5)
        self.r.echo(self.STOP)
        self.t.join(10)
        return "\n".join(self.lines).encode()


def redis_contents(url: str) -> bytes:
    """Every key and value left in Redis, by type, and each key's DUMP."""
    r = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in r.scan_iter(count=1000):
        parts.append(key)
        t = r.type(key).decode()
        if t == "string":
            parts.append(r.get(key) or b"")
        elif t == "hash":
            parts += [k + b"=" + v for k, v in r.hgetall(key).items()]
        elif t == "stream":
            for _, fields in r.xrange(key):
                parts += [k + b"=" + v for k, v in fields.items()]
        elif t == "list":
            parts += r.lrange(key, 0, -1)
        elif t == "set":
            parts += list(r.smembers(key))
        elif t == "zset":
            parts += r.zrange(key, 0, -1)
        parts.append(r.dump(key) or b"")
    return b"\n".join(parts)


@pytest.mark.integration
def test_phi_never_leaves_the_request(dstack, images):
    pos, _ = images
    data = dicom(pos, transfer_syntax=RLELossless)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert str(ds.PatientName) == PHI["patient_name"] and ds.PatientID == PHI["patient_id"]
    assert ds.PatientBirthDate == PHI["birth_date"] and str(ds.ReferringPhysicianName) == PHI["referring_physician"]
    secrets = SECRETS + [str(ds.SOPInstanceUID).encode(), str(ds.StudyInstanceUID).encode()]
    # positive controls: the search finds every secret in the file and inside its base64
    assert leaks(data, secrets) == secrets
    assert leaks(b'{"image": "' + base64.b64encode(data) + b'"}', secrets) == secrets

    bodies: list[bytes] = []

    def record(resp: httpx.Response) -> None:
        resp.read()
        bodies.append(b"\n".join(k + b": " + v for k, v in resp.headers.raw) + b"\n" + resp.content)

    mon = Monitor(dstack.redis.url)
    with httpx.Client(base_url=dstack.url, timeout=180, event_hooks={"response": [record]}) as c:
        sync = explain(c, data)
        assert sync.status_code == 200, sync.text[:300]
        assert explain(c, data, multipart=True).status_code == 200
        # a job, read from its stream while the worker is paused
        dstack.worker.send_signal(signal.SIGSTOP)
        try:
            body = {"model": "lesion-cnn", "methods": METHODS, "outputs": ["array"], "normalize": "none"}
            job = c.post("/v1/jobs", json={**body, "image": base64.b64encode(data).decode()})
            assert job.status_code == 202, job.text[:300]
            jid = job.json()["id"]
            r = redis.Redis.from_url(dstack.redis.url)
            queued = [
                decode_job(f)
                for key in r.scan_iter(match="whitebox:*")
                if r.type(key) == b"stream"
                for _, f in r.xrange(key)
            ]
            carried = [j for j in queued if j.id == jid]
            assert len(carried) == 1
            payload = base64.b64decode(carried[0].request.image)
            assert payload[128:132] == b"DICM" and payload != data  # a DICOM file, not the one sent
            assert leaks(payload, secrets) == []
            assert pydicom.dcmread(io.BytesIO(payload)).PixelData == ds.PixelData
        finally:
            dstack.worker.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 120
        while (state := c.get(f"/v1/jobs/{jid}").json())["status"] not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        assert state["status"] == "done", state
        assert state["result"]["prediction"] == sync.json()["prediction"]
        # broken files, refused at the door (sync and as a job)
        cut = data[: data.rindex(b"\xfe\xff\xdd\xe0") - 200]  # RLE pixel data cut inside its fragment
        wrong = bytearray(dicom(pos))  # uncompressed pixels declared as JPEG 2000 lossless
        wrong_ts = bytes(wrong).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.4.90", 1)
        assert wrong_ts != bytes(wrong)
        htj2k = bytes(wrong).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.4.201", 1)
        for broken in (cut, wrong_ts, htj2k):
            assert leaks(broken, secrets)  # the broken files still carry the patient data
            for route in ("/v1/explain", "/v1/jobs"):
                rb = c.post(route, json={**body, "image": base64.b64encode(broken).decode()})
                assert rb.status_code == 422, (route, rb.text[:300])
                assert rb.headers["content-type"].startswith("application/problem+json")
                assert "DICOM" in rb.json()["detail"], rb.text[:300]
            assert explain(c, broken, multipart=True).status_code == 422
    commands = mon.stop()
    assert b"XADD" in commands.upper() and any(b[128:132] == b"DICM" for b in decoded_runs(commands))
    logs = b"\n".join(p.read_bytes() for p in sorted(dstack.tmp.glob("*.log")))
    assert logs, "the stack's logs were captured"
    found = {
        "logs": leaks(logs, secrets),
        "redis commands": leaks(commands, secrets),
        "redis keys": leaks(redis_contents(dstack.redis.url), secrets),
        "responses": leaks(b"\n".join(bodies), secrets),
    }
    assert len(bodies) >= 10
    assert found == {k: [] for k in found}, found
