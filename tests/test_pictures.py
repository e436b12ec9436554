"""Pictures that do not mislead (issue 12 item 4), through the real gateway and worker: signed maps
default to abs_max and a diverging colour map with zero relevance at its centre colour, the array
keeps the sign and the zeros, unsigned maps keep min-max and jet, the response says which were used;
colour bar, opacity, threshold and contour as asked; inconsistent options refused with 4xx."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import png_b64, png_bytes
from workers.serving import render

pytestmark = pytest.mark.integration


def picture(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture(scope="module")
def square() -> np.ndarray:
    """A 64x64 (the demo model's size: no resize) black image with a bright square: integrated
    gradients from the black baseline are exactly zero on every black pixel."""
    a = np.zeros((64, 64, 3), np.uint8)
    a[20:44, 16:40] = (230, 200, 40)
    return a


def explain(client, image, **kw):
    body = {"model": "shapes-cnn", "image": png_b64(image), **kw}
    r = client.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def test_signed_map_defaults_keep_zero_at_zero(client, square):
    ig = {"name": "integrated_gradients", "params": {"steps": 8}}
    e = explain(client, square, methods=[ig], outputs=["array", "heatmap_png"])["explanations"][0]
    assert (e["signed"], e["normalize"], e["colormap"]) == (True, "abs_max", "bwr")
    a = render.decode_array(e["array"])
    raw = render.decode_array(
        explain(client, square, methods=[ig], outputs=["array"], normalize="none")["explanations"][0]["array"]
    )
    black = (square == 0).all(axis=-1)
    assert (raw[black] == 0).all() and (raw[~black] != 0).any()
    assert (raw < 0).any() and (raw > 0).any(), "a signed map: both signs present"
    s = np.abs(raw).max()
    assert np.abs(a * s - raw).max() <= 1e-6 * s  # abs_max: sign and zeros kept, no shift
    assert (a[black] == 0).all() and np.abs(a).max() == pytest.approx(1.0)
    assert e["raw_range"] == pytest.approx([float(raw.min()), float(raw.max())], rel=1e-6)
    png = picture(e["heatmap_png"])
    centre = render.centre_colour("bwr")
    assert (png[black] == centre).all(), "zero relevance is drawn at the diverging map's centre colour"
    assert (png[raw > 0.5 * s] != centre).any(axis=-1).all()


def test_unsigned_map_keeps_minmax_and_jet(client, square):
    e = explain(client, square, methods=["gradcam"], outputs=["array"])["explanations"][0]
    assert (e["signed"], e["normalize"], e["colormap"]) == (False, "minmax", "jet")
    a = render.decode_array(e["array"])
    assert a.min() == 0.0 and a.max() == pytest.approx(1.0)


def test_asked_normalisation_and_colormap_are_used_and_said(client, square):
    e = explain(
        client, square, methods=["integrated_gradients"], outputs=["array"], normalize="minmax", colormap="RdBu_r"
    )["explanations"][0]
    assert (e["signed"], e["normalize"], e["colormap"]) == (True, "minmax", "RdBu_r")
    a = render.decode_array(e["array"])
    assert a.min() == 0.0 and a.max() == pytest.approx(1.0)


def test_colorbar_opacity_threshold_contour(client, square):
    calls = [{"name": "integrated_gradients", "params": {"steps": 8}}]
    plain = explain(client, square, methods=calls, outputs=["heatmap_png", "overlay_png"], opacity=0.0)
    e = plain["explanations"][0]
    assert np.array_equal(picture(e["overlay_png"]), square)  # opacity 0: the image alone
    assert picture(e["heatmap_png"]).shape == (64, 64, 3)
    barred = explain(client, square, methods=calls, outputs=["heatmap_png"], colorbar=True)["explanations"][0]
    hb = picture(barred["heatmap_png"])
    assert hb.shape[0] == 64 and hb.shape[1] > 64 and np.array_equal(hb[:, :64], picture(e["heatmap_png"]))
    cut = explain(
        client, square, methods=calls, outputs=["overlay_png", "mask_png", "array"], threshold=5, contour=True
    )["explanations"][0]
    keep = picture(cut["mask_png"])[..., 0] == 255
    a = np.abs(render.decode_array(cut["array"]))
    assert 0.05 * 64 * 64 <= keep.sum() <= 0.06 * 64 * 64 and a[keep].min() >= a[~keep].max()
    ov = picture(cut["overlay_png"])
    assert (ov[~keep] == square[~keep]).all()  # outside the kept 5 %: the image untouched
    assert (ov[keep] == render.CONTOUR_RGB).all(axis=-1).any()


def test_multipart_takes_the_picture_options(client, square):
    form = {"model": "shapes-cnn", "methods": "integrated_gradients", "outputs": "mask_png", "threshold": "10"}
    r = client.post("/v1/explain", files={"image": ("s.png", png_bytes(square), "image/png")}, data=form)
    assert r.status_code == 200, r.text[:300]
    keep = picture(r.json()["explanations"][0]["mask_png"])[..., 0] == 255
    assert 0.1 * 64 * 64 <= keep.sum() <= 0.11 * 64 * 64


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"contour": True, "outputs": ["overlay_png"]}, "contour"),
        ({"contour": True, "threshold": 5, "outputs": ["heatmap_png"]}, "overlay_png"),
        ({"colorbar": True, "outputs": ["array"]}, "colorbar"),
        ({"colormap": "jett"}, "unknown colormap"),
        ({"threshold": 0}, "threshold"),
        ({"opacity": 1.5}, "opacity"),
    ],
)
def test_inconsistent_picture_options_are_refused(client, square, extra, words):
    r = client.post(
        "/v1/explain", json={"model": "shapes-cnn", "image": png_b64(square), "methods": ["saliency"], **extra}
    )
    assert r.status_code == 422, r.text[:300]
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words in r.text
