"""Every image mode decodes to the right numbers or is refused naming it (issue 12 item 1): files
written by Pillow in each mode and format, read by ``common.images.decode`` as the gateway and the
worker read them; EXIF orientation, frames, windows of high-bit-depth grey; and through the real
service the regression of a 16-bit grey PNG answered as a white image with a wrong class."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from common.images import decode
from schemas.problems import ImageProblem
from schemas.registry import load_registry
from tests.helpers import png_b64
from workers.models.loading import load_model
from workers.serving import render
from workers.training.shapes import generate

LIMIT = 10**7
RNG = np.random.default_rng(12)
GREY = RNG.integers(0, 256, (24, 40), dtype=np.uint8)  # every level class, odd sizes (w != h)
RGB = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (24, 40), dtype=np.uint8)


def file(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def levels(d) -> np.ndarray:
    return np.asarray(d.image, dtype=np.float64)


def over_black(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] if colour.ndim == 3 else alpha.astype(np.float64)
    return np.round(colour * a / 255.0)


# ---- 8-bit and 1-bit --------------------------------------------------------------------------
def test_grey_8_bit_is_read_as_it_is():
    for fmt in ("PNG", "TIFF", "GIF"):
        d = decode(file(Image.fromarray(GREY, "L"), fmt), LIMIT)
        assert d.image.mode in ("L", "RGB") and d.info.bits == 8 and d.info.window is None, fmt
        assert np.array_equal(np.asarray(d.image.convert("L")), GREY), fmt


def test_one_bit_is_black_and_white():
    bw = GREY > 127
    d = decode(file(Image.fromarray(bw), "PNG"), LIMIT)
    assert d.info.mode == "1" and d.info.bits == 1 and d.image.mode == "L"
    assert np.array_equal(np.asarray(d.image), np.where(bw, 255, 0))


def test_grey_alpha_is_composited_over_black():
    la = Image.fromarray(np.stack([GREY, ALPHA], -1), "LA")
    d = decode(file(la, "PNG"), LIMIT)
    assert d.info.mode == "LA" and d.image.mode == "L"
    assert np.array_equal(levels(d), over_black(GREY, ALPHA))
    opaque = Image.fromarray(np.stack([GREY, np.full_like(GREY, 255)], -1), "LA")
    assert np.array_equal(levels(decode(file(opaque, "PNG"), LIMIT)), GREY)  # opaque: the grey itself


def test_rgb_and_rgba():
    d = decode(file(Image.fromarray(RGB, "RGB"), "PNG"), LIMIT)
    assert d.image.mode == "RGB" and np.array_equal(np.asarray(d.image), RGB)
    rgba = np.concatenate([RGB, ALPHA[..., None]], -1)
    d = decode(file(Image.fromarray(rgba, "RGBA"), "PNG"), LIMIT)
    assert d.info.mode == "RGBA" and d.image.mode == "RGB"
    assert np.array_equal(np.asarray(d.image, dtype=np.float64), over_black(RGB, ALPHA))


def test_palette_with_and_without_transparency():
    pal = Image.fromarray(RGB, "RGB").quantize(64)
    expect = np.asarray(pal.convert("RGB"))
    d = decode(file(pal, "PNG"), LIMIT)
    assert d.info.mode == "P" and np.array_equal(np.asarray(d.image), expect)
    idx = np.asarray(pal)
    t = int(idx[0, 0])
    transparent = (idx == t)[..., None]
    d = decode(file(pal, "PNG", transparency=t), LIMIT)
    assert np.array_equal(np.asarray(d.image), np.where(transparent, 0, expect))
    greys = Image.fromarray(GREY, "L").convert("P")  # a grey palette gives the grey levels back
    assert np.array_equal(np.asarray(decode(file(greys, "PNG"), LIMIT).image.convert("L")), GREY)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_is_converted_as_pillow_converts_it(fmt):
    cmyk = Image.fromarray(RGB, "RGB").convert("CMYK")
    data = file(cmyk, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    d = decode(data, LIMIT)
    assert d.info.mode == "CMYK" and d.image.mode == "RGB"
    assert np.array_equal(np.asarray(d.image), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    if fmt == "TIFF":  # lossless: the colours come back
        assert np.abs(np.asarray(d.image, dtype=int) - RGB).max() <= 1


def test_jpeg_ycbcr_reads_as_rgb():
    d = decode(file(Image.fromarray(RGB, "RGB"), "JPEG", quality=95), LIMIT)
    assert d.image.mode == "RGB" and d.info.format == "JPEG"


# ---- high bit depth -------------------------------------------------------------------------
def test_16_bit_grey_full_range_gives_the_8_bit_levels_back():
    """The issue's case: I;16 was turned all white by convert("RGB")."""
    sixteen = Image.fromarray(GREY.astype(np.uint16) * 257)
    for fmt in ("PNG", "TIFF"):
        d = decode(file(sixteen, fmt), LIMIT)
        assert d.info.mode.startswith("I;16") and d.info.bits == 16 and d.image.mode == "F", fmt
        assert d.info.window is not None and d.info.window.source == "full_range"
        assert np.abs(levels(d) - GREY).max() <= 1e-4, fmt
        assert levels(d).mean() < 200  # not white


def test_16_bit_grey_odd_values_and_request_window():
    v = RNG.integers(0, 4096, (24, 40)).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    data = file(Image.fromarray(v), "PNG")
    full = levels(decode(data, LIMIT))
    assert np.abs(full - v / 65535 * 255).max() <= 255 / 65535 + 1e-4  # the bit range, linearly
    d = decode(data, LIMIT, window=(2048.0, 4096.0))
    assert d.info.window.source == "request" and (d.info.window.center, d.info.window.width) == (2048.0, 4096.0)
    expect = np.clip(((v - 2047.5) / 4095 + 0.5) * 255, 0, 255)  # DICOM's linear window
    assert np.abs(levels(d) - expect).max() <= 1e-3
    narrow = levels(decode(data, LIMIT, window=(1000.0, 200.0)))
    assert (narrow[v < 899] == 0).all() and (narrow[v > 1100] == 255).all()


def test_32_bit_integer_and_float_grey_use_their_own_range():
    v = RNG.integers(-70000, 70000, (24, 40)).astype(np.int32)
    d = decode(file(Image.fromarray(v, "I"), "TIFF"), LIMIT)
    assert d.info.mode == "I" and d.info.bits == 32 and d.info.window.source == "full_range"
    lo, hi = v.min(), v.max()
    assert np.abs(levels(d) - (v - lo) / (hi - lo + 1) * 255).max() <= 255 / (hi - lo) + 1e-3
    f = RNG.normal(0, 1000, (24, 40)).astype(np.float32)
    d = decode(file(Image.fromarray(f, "F"), "TIFF"), LIMIT)
    assert d.info.mode == "F" and d.image.mode == "F"
    assert levels(d)[np.unravel_index(f.argmin(), f.shape)] == 0 and levels(d).max() == pytest.approx(255, abs=0.2)
    assert np.corrcoef(levels(d).ravel(), f.ravel())[0, 1] > 0.9999  # linear in the values
    k = GREY.astype(np.float32)  # a float file of 8-bit levels: those levels
    assert np.abs(levels(decode(file(Image.fromarray(k, "F"), "TIFF"), LIMIT)) - GREY).max() <= 1e-3


def test_non_finite_float_and_window_on_8_bit_are_refused():
    f = np.ones((8, 8), np.float32)
    f[3, 3] = np.nan
    with pytest.raises(ImageProblem, match="mode F image holds NaN"):
        decode(file(Image.fromarray(f, "F"), "TIFF"), LIMIT)
    with pytest.raises(ImageProblem, match="not to a mode L image") as e:
        decode(file(Image.fromarray(GREY, "L"), "PNG"), LIMIT, window=(100.0, 50.0))
    assert e.value.field == "window_center"


def test_unknown_mode_is_refused_naming_it():
    lab = Image.fromarray(RGB, "RGB").convert("LAB")
    with pytest.raises(ImageProblem, match="unsupported image mode LAB"):
        decode(file(lab, "TIFF"), LIMIT)
    with pytest.raises(ImageProblem, match="unsupported image format ICO"):
        decode(file(Image.fromarray(RGB), "ICO"), LIMIT)


@pytest.mark.parametrize("fmt", ["BMP", "WEBP"])
def test_bmp_and_lossless_webp_give_the_pixels_back(fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    d = decode(file(Image.fromarray(RGB, "RGB"), fmt, **kw), LIMIT)
    assert d.info.format == fmt and np.array_equal(np.asarray(d.image.convert("RGB")), RGB)


# ---- orientation and frames -------------------------------------------------------------------
TRANSPOSE = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    img = Image.fromarray(RGB, "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    d = decode(file(img, "PNG", exif=exif), LIMIT)
    expect = RGB if orientation == 1 else TRANSPOSE[orientation](RGB)
    assert np.array_equal(np.asarray(d.image), expect)
    assert d.info.orientation == (None if orientation == 1 else orientation)
    assert (d.info.width, d.info.height) == (expect.shape[1], expect.shape[0])


def frames_file(fmt: str) -> tuple[bytes, list[np.ndarray]]:
    shots = [np.full((16, 16, 3), (40 * i, 200 - 40 * i, 90), np.uint8) for i in range(4)]
    ims = [Image.fromarray(s) for s in shots]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    return file(ims[0], fmt, save_all=True, append_images=ims[1:], duration=50, loop=0, **kw), shots


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "WEBP"])
def test_animated_and_multi_page_need_a_frame(fmt):
    data, shots = frames_file(fmt)
    with pytest.raises(ImageProblem, match="has 4 frames") as e:
        decode(data, LIMIT)
    assert e.value.field == "frame"
    for i in (0, 2, 3):
        d = decode(data, LIMIT, frame=i)
        assert (d.info.frame, d.info.frames) == (i, 4)
        tol = 0 if fmt != "GIF" else 8  # GIF's palette
        assert np.abs(np.asarray(d.image.convert("RGB"), dtype=int) - shots[i]).max() <= tol, (fmt, i)
    with pytest.raises(ImageProblem, match="frame 4 is out of range"):
        decode(data, LIMIT, frame=4)


def test_frame_on_a_single_image():
    data = file(Image.fromarray(GREY), "PNG")
    assert decode(data, LIMIT, frame=0).info.frames == 1
    with pytest.raises(ImageProblem, match="frame 1 is out of range"):
        decode(data, LIMIT, frame=1)


# ---- the model input ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["shapes-cnn", "lesion-cnn"])
def test_the_16_bit_twin_gives_the_8_bit_tensor(model):
    """Mode F is never rounded: the 16-bit twin (k * 257) of an 8-bit file gives the 8-bit tensor at the
    model's size, for 3 and 1 channels. Resized from another size, the 8-bit path resizes in uint8
    (PIL rounds) and mode F in float: within one grey level, not yet 1e-5 (see docs/images.md)."""
    reg = load_registry()
    m = load_model(reg.get(model), reg)
    for shape in ((24, 40), tuple(m.input_size)):
        g = RNG.integers(0, 256, shape, dtype=np.uint8)
        eight = decode(file(Image.fromarray(g), "PNG"), LIMIT).image
        sixteen = decode(file(Image.fromarray(g.astype(np.uint16) * 257), "PNG"), LIMIT).image
        assert sixteen.mode == "F"
        a, b = m.preprocess([eight]), m.preprocess([sixteen])
        assert a.shape == b.shape and a.shape[1] == m.channels
        std = m.mean_std()[1].flatten()[0].item()
        tol = 1e-5 if shape == tuple(m.input_size) else 1.0 / 255 / std + 1e-5
        assert (a - b).abs().max().item() <= tol, (model, shape)
    f = Image.fromarray(np.full((8, 8), 100.4, np.float32), mode="F")  # not rounded to 100
    x = m.preprocess([f])
    mean, std = (t.flatten()[0].item() for t in m.mean_std())
    assert x.flatten()[0].item() * std + mean == pytest.approx(100.4 / 255, abs=1e-6)


# ---- through the real service ------------------------------------------------------------------
def grey_shape() -> np.ndarray:
    images, labels, _ = generate(1, seed=4242)
    return np.asarray(Image.fromarray(images[0]).convert("L"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.integration
def test_16_bit_png_gets_the_8_bit_answer_through_the_service(client):
    g = grey_shape()
    body = {"model": "shapes-cnn", "methods": ["saliency", "integrated_gradients"], "outputs": ["array"]}
    eight = client.post("/v1/explain", json={**body, "image": png_b64(g), "normalize": "none"})
    sixteen = client.post(
        "/v1/explain",
        json={**body, "image": b64(file(Image.fromarray(g.astype(np.uint16) * 257), "PNG")), "normalize": "none"},
    )
    assert eight.status_code == 200 and sixteen.status_code == 200, sixteen.text[:300]
    a, b = eight.json(), sixteen.json()
    assert b["image"]["mode"] == "I;16" and b["image"]["bits"] == 16 and b["image"]["window"]["source"] == "full_range"
    assert a["prediction"]["class_index"] == b["prediction"]["class_index"]
    assert a["prediction"]["score"] == pytest.approx(b["prediction"]["score"], abs=1e-5)
    for ea, eb in zip(a["explanations"], b["explanations"]):
        ma, mb = render.decode_array(ea["array"]), render.decode_array(eb["array"])
        assert np.abs(ma - mb).max() <= 1e-5 * max(np.abs(ma).max(), 1e-12), ea["method"]
    white = client.post("/v1/explain", json={**body, "image": png_b64(np.full_like(g, 255))}).json()
    assert white["prediction"]["class_index"] != a["prediction"]["class_index"] or white["prediction"]["score"] != (
        pytest.approx(a["prediction"]["score"])
    ), "the white image the old code saw answers differently (the test can fail)"


@pytest.mark.integration
def test_exif_rotated_jpeg_gets_a_displayed_size_overlay(client):
    img = Image.fromarray(RGB, "RGB").resize((80, 48))  # stored 80 wide, 48 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 48 wide, 80 high
    r = client.post(
        "/v1/explain",
        json={
            "model": "shapes-cnn",
            "image": b64(file(img, "JPEG", exif=exif, quality=95)),
            "methods": ["gradcam"],
            "outputs": ["overlay_png"],
        },
    )
    assert r.status_code == 200, r.text[:300]
    assert r.json()["image"]["orientation"] == 6
    png = Image.open(io.BytesIO(base64.b64decode(r.json()["explanations"][0]["overlay_png"])))
    assert png.size == (48, 80)


@pytest.mark.integration
def test_unsupported_mode_is_a_problem_naming_it(client):
    lab = Image.fromarray(RGB, "RGB").convert("LAB")
    r = client.post(
        "/v1/explain", json={"model": "shapes-cnn", "image": b64(file(lab, "TIFF")), "methods": ["saliency"]}
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "unsupported image mode LAB" in r.json()["detail"]
    data, _ = frames_file("GIF")
    r = client.post("/v1/explain", json={"model": "shapes-cnn", "image": b64(data), "methods": ["saliency"]})
    assert r.status_code == 422 and "frame" in r.json()["detail"]
    r = client.post(
        "/v1/explain", json={"model": "shapes-cnn", "image": b64(data), "methods": ["saliency"], "frame": 1}
    )
    assert r.status_code == 200 and r.json()["image"]["frame"] == 1
