"""Proof of no change: every golden case (tests/golden_cases.py) answers bit-identically to the
recording in tests/golden/maps.json: the same float32 arrays and the same JSON body (PNGs,
predictions, metadata), timings and ids aside. Bit-identity holds on the platform of the recording
(the same torch on the same CPU); on another platform the arrays' statistics must agree within
``golden_cases.tolerance``, and the test says that it could not check the bits."""

from __future__ import annotations

import numpy as np
import pytest

from tests.golden_cases import GoldenStack, load, platform, run_all, statistics_differ, tolerance

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    stack = GoldenStack(tmp_path_factory.mktemp("golden"))
    try:
        yield run_all(stack.url)
    finally:
        stack.stop()


def test_every_case_is_recorded(answers):
    recorded = load()["cases"]
    assert sorted(answers) == sorted(recorded), "cases were added or removed: record anew in its own commit"
    assert sum(v["status"] == 200 for v in recorded.values()) >= 0.9 * len(recorded)


def test_maps_and_bodies_bit_identical(answers):
    golden = load()
    recorded = golden["cases"]
    if golden["platform"] != platform():
        far = {
            k: d
            for k, w in recorded.items()
            if k in answers and (d := statistics_differ(answers[k], w, tolerance(w["request"])))
        }
        assert not far, "\n".join(f"{k}: {d}" for k, d in far.items())
        pytest.skip(
            f"recorded on {golden['platform']}, running on {platform()}: bits not comparable; "
            f"statistics of {len(recorded)} cases within tolerance"
        )
    changed = []
    for key, want in recorded.items():
        got = answers.get(key)
        if got is None:
            continue
        if got["status"] != want["status"] or got["body_sha256"] != want["body_sha256"]:
            arrays = [
                (g["sha256"] == w["sha256"], g["sum"] - w["sum"], g["abs_max"], w["abs_max"])
                for g, w in zip(got["arrays"], want["arrays"])
            ]
            changed.append((key, want["request"], got["status"], want["status"], arrays))
    assert not changed, "\n".join(map(str, changed))
    assert any(np.isfinite(a["sum"]) for v in recorded.values() for a in v["arrays"])
