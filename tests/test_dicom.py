"""DICOM in (issue 12 item 2, docs/dicom.md): common/dicom.py on real files written by
tests/dicom_files.py, then through the real stack, and the patient data that never leaves the request.

Expected pixels come from the numbers written (e.g. stored 8 + 16 k under the file's window is k), not
from the code under test."""

from __future__ import annotations

import io
import math
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from common.dicom import PIXEL_TAGS, decode_dicom, dicom_size, is_dicom
from schemas.problems import ImageProblem
from tests.dicom_files import GREY8_WINDOW, grey8_to_dicom, write_dicom
from tests.helpers import png_bytes

LOSSLESS = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
]
PLANTED_NAME = "Planted^Patient^Zq7"
PLANTED_ID = "PID-Zq7-448812"
PLANTED = dict(
    patient_name=PLANTED_NAME,
    patient_id=PLANTED_ID,
    birth_date="19700101",
    institution="Zq7 General Hospital",
    private_value="Zq7 private note",
)
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # files shipped in pydicom's wheel
MAX = 1_000_000


def grey8(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


def pixels(data: bytes, **kw) -> np.ndarray:
    return np.asarray(decode_dicom(data, kw.pop("max_pixels", MAX), **kw).image)


def rewrite(data: bytes, change: Callable[[pydicom.Dataset], None]) -> bytes:
    """The file read, changed and written again (a real file, as a device would send it)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def refused(data: bytes, *words: str, field: str = "image", **kw) -> str:
    with pytest.raises(ImageProblem) as e:
        decode_dicom(data, kw.pop("max_pixels", MAX), **kw)
    p = e.value
    assert p.status == 422 and p.field == field, (p.status, p.field, p.detail)
    for w in words:
        assert w.lower() in p.detail.lower(), (w, p.detail)
    logged = "".join(traceback.format_exception(p))  # what a log line with exc_info would hold
    assert p.__cause__ is None and (p.__context__ is None or p.__suppress_context__)  # no decoder text chained
    for secret in (PLANTED_NAME, "Planted", PLANTED_ID, "Zq7"):
        assert secret not in p.detail and secret not in logged
    return p.detail


# ---- recognising and sizing ----------------------------------------------------------------


def test_is_dicom_needs_the_preamble():
    data = grey8_to_dicom(grey8())
    assert is_dicom(data)
    assert not is_dicom(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    assert not is_dicom(data[:131])
    bare = data[132:]  # the data set without preamble and magic (pydicom would read it with force=True)
    assert not is_dicom(bare)
    refused(bare, "not a DICOM file")


def test_dicom_size_from_the_header_only():
    data = grey8_to_dicom(grey8(48, 40))
    assert dicom_size(data) == (40, 48)
    assert dicom_size(data[: len(data) - 1000]) == (40, 48)  # pixel data cut: the header still answers


# ---- grey levels: modality LUT, VOI, inversion ----------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("ts", LOSSLESS, ids=lambda u: u.name)
def test_grey8_in_12_bits_gives_the_same_levels(ts, photometric):
    img = grey8()
    d = decode_dicom(grey8_to_dicom(img, photometric=photometric, transfer_syntax=ts), MAX)
    assert d.image.mode == "F" and d.image.size == (40, 48)
    assert np.array_equal(np.asarray(d.image), img.astype(np.float32))
    i = d.info
    assert (i.format, i.mode, i.bits, i.width, i.height, i.frames, i.frame) == (
        "DICOM",
        photometric,
        12,
        40,
        48,
        1,
        None,
    )
    assert (i.window.center, i.window.width, i.window.source) == (*GREY8_WINDOW, "file")
    assert (i.rescale_slope, i.rescale_intercept, i.inverted) == (1.0, -1024.0, photometric == "MONOCHROME1")


def test_full_range_when_the_file_has_no_window():
    j = np.arange(16)
    stored = np.tile(273 * j, (4, 1))  # 12 bits: 0 .. 4095 in steps of 4095 / 15
    d = decode_dicom(write_dicom(stored, rescale_intercept=-1024.0), MAX)
    assert np.allclose(np.asarray(d.image), np.tile(17.0 * j, (4, 1)), atol=1e-3)  # 0 -> 0, 4095 -> 255
    w = d.info.window
    assert (w.center, w.width, w.source) == (-1024 + 2048, 4096, "full_range")


def test_full_range_of_signed_values_through_the_rescale():
    stored = np.array([[-2048, 0, 2047]])  # 12 bits signed; modality 2 s + 10
    d = decode_dicom(write_dicom(stored, signed=True, rescale_slope=2.0, rescale_intercept=10.0), MAX)
    y = np.asarray(d.image)[0]
    assert y[0] == 0 and y[2] == 255
    assert y[1] == pytest.approx((10 - -4086) / (4104 - -4086) * 255, abs=1e-3)  # 0 -> modality 10, linear
    assert (d.info.rescale_slope, d.info.rescale_intercept) == (2.0, 10.0)


def test_request_window_overrides_the_files():
    stored = np.array([[974, 1024, 1124, 1224, 1324]])  # modality -50, 0, 100, 200, 300
    data = write_dicom(stored, window=(40.0, 400.0))
    y = pixels(data, window=(100.5, 201.0))  # (v - 100) / 200 + 0.5: 0 -> 0, 100 -> 127.5, 200 -> 255
    assert np.allclose(y[0], [0, 0, 127.5, 255, 255], atol=1e-3)
    w = decode_dicom(data, MAX, window=(100.5, 201.0)).info.window
    assert (w.center, w.width, w.source) == (100.5, 201.0, "request")


def test_first_of_several_file_windows():
    stored = np.array([[1024, 1124, 1224]])  # modality 0, 100, 200
    d = decode_dicom(write_dicom(stored, window=([100.5, 40.0], [201.0, 400.0])), MAX)
    assert np.allclose(np.asarray(d.image)[0], [0, 127.5, 255], atol=1e-3)
    assert (d.info.window.center, d.info.window.width) == (100.5, 201.0)


def test_voi_functions_linear_exact_and_sigmoid():
    stored = np.array([[1024, 1124, 1224, 1149]])  # modality 0, 100, 200, 125
    exact = pixels(write_dicom(stored, window=(100.0, 200.0), voi_function="LINEAR_EXACT"))[0]
    assert np.allclose(exact, [0, 127.5, 255, 255 * 0.625], atol=1e-3)  # (v - c) / w + 0.5
    sig = pixels(write_dicom(stored, window=(100.0, 100.0), voi_function="SIGMOID"))[0]
    assert sig[1] == pytest.approx(127.5, abs=1e-3)  # 255 / (1 + exp(-4 (v - c) / w)) at v = c
    assert sig[3] == pytest.approx(255 / (1 + math.exp(-1.0)), abs=1e-3)  # v - c = w / 4
    assert sig[0] < 5 and sig[2] > 250


def test_modality_lut_sequence():
    stored = np.arange(256).reshape(16, 16)
    lut = [4 * (255 - i) for i in range(256)]  # modality value 4 (255 - s): 0 .. 1020, reversed
    d = decode_dicom(write_dicom(stored, bits_stored=8, modality_lut=([256, 0, 16], lut)), MAX)
    assert np.allclose(np.asarray(d.image), 255.0 - stored, atol=1e-3)  # full range of the LUT's output
    assert d.info.rescale_slope is None and d.info.window.source == "full_range"


def test_voi_lut_sequence():
    stored = np.arange(256).reshape(16, 16)
    lut = [255 - i for i in range(256)]  # 8-bit output
    data = write_dicom(stored, bits_stored=8, rescale_intercept=None, rescale_slope=None, voi_lut=([256, 0, 8], lut))
    d = decode_dicom(data, MAX)
    assert np.allclose(np.asarray(d.image), 255.0 - stored, atol=1e-3)
    assert (d.info.window.center, d.info.window.width, d.info.window.source) == (128, 256, "file")


def test_monochrome1_is_inverted_after_the_window():
    stored = np.array([[1024, 1124, 1224]])  # modality 0, 100, 200 under the window (100.5, 201)
    d = decode_dicom(write_dicom(stored, window=(100.5, 201.0), photometric="MONOCHROME1"), MAX)
    assert np.allclose(np.asarray(d.image)[0], [255, 127.5, 0], atol=1e-3) and d.info.inverted


# ---- colour ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_rgb_8_bit(ts):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    d = decode_dicom(write_dicom(rgb, bits_stored=8, photometric="RGB", transfer_syntax=ts), MAX)
    assert d.image.mode == "RGB" and np.array_equal(np.asarray(d.image), rgb)
    assert d.info.mode == "RGB" and d.info.window is None


def test_ybr_full_422_jpeg_against_pillows_decoder():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = np.arange(64)[None] * 4
    rgb[..., 1] = np.arange(64)[:, None] * 4
    rgb[16:48, 16:48, 2] = 200
    data = write_dicom(rgb, bits_stored=8, photometric="RGB", transfer_syntax=JPEGBaseline8Bit)
    d = decode_dicom(data, MAX)
    assert d.info.mode == "YBR_FULL_422" and d.image.mode == "RGB"
    frag = next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1))
    ref = np.asarray(Image.open(io.BytesIO(frag)).convert("RGB"), dtype=np.int16)  # another decoder
    assert np.abs(np.asarray(d.image, dtype=np.int16) - ref).max() <= 3


def test_palette_colour():
    idx = np.arange(256).reshape(16, 16)
    entries = np.stack([np.arange(256), 255 - np.arange(256), (np.arange(256) * 7) % 256]) * 257  # 16-bit
    data = write_dicom(
        idx,
        bits_stored=8,
        rescale_intercept=None,
        rescale_slope=None,
        photometric="PALETTE COLOR",
        palette=([256, 0, 16], entries),
    )
    d = decode_dicom(data, MAX)
    expect = np.stack([entries[c][idx] // 257 for c in range(3)], axis=-1)
    assert d.image.mode == "RGB" and np.array_equal(np.asarray(d.image), expect.astype(np.uint8))


@pytest.mark.parametrize("ts", [JPEGBaseline8Bit, JPEGExtended12Bit], ids=lambda u: u.name)
def test_jpeg_baseline_grey_against_pillows_decoder(ts):
    yy, xx = np.mgrid[0:64, 0:64]
    img = ((xx * 3 + yy * 2) % 256).astype(np.uint8)
    data = write_dicom(img, bits_stored=8, rescale_intercept=None, rescale_slope=None, transfer_syntax=ts)
    d = decode_dicom(data, MAX)
    frag = next(generate_frames(pydicom.dcmread(io.BytesIO(data)).PixelData, number_of_frames=1))
    ref = np.asarray(Image.open(io.BytesIO(frag)).convert("L"), dtype=np.float32)
    assert np.abs(np.asarray(d.image) - ref).max() <= 2  # 8 bits, full range window: level = sample
    assert d.info.window.source == "full_range" and d.info.bits == 8


@pytest.mark.parametrize(
    "name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"]
)
def test_other_encoders_files_match_the_uncompressed_one(name):
    """JPEG-LS cannot be encoded here: pydicom's own sample files (the same MR image, written by other
    tools under several syntaxes) are decoded and compared with the uncompressed one, whose levels are
    computed here from its raw bytes and its window tags."""
    plain = (PYDICOM_FILES / "MR_small.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(plain))
    raw = np.frombuffer(ds.PixelData, "<i2" if ds.PixelRepresentation else "<u2").reshape(ds.Rows, ds.Columns)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expect = np.clip(
        ((raw * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0)) - (c - 0.5)) / (w - 1) + 0.5)
        * 255,
        0,
        255,
    )
    assert np.allclose(pixels(plain), expect, atol=1e-3)
    assert np.array_equal(pixels((PYDICOM_FILES / name).read_bytes()), pixels(plain))


# ---- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLosslessSV1], ids=lambda u: u.name
)
def test_multi_frame_needs_a_frame_and_picks_it(ts):
    frames = np.stack([np.full((40, 40), 8 + 16 * k) for k in (10, 100, 250)])
    data = write_dicom(frames, window=GREY8_WINDOW, transfer_syntax=ts)
    refused(data, "3 frames", "frame", field="frame")
    for f, k in enumerate((10, 100, 250)):
        d = decode_dicom(data, MAX, frame=f)
        assert np.array_equal(np.asarray(d.image), np.full((40, 40), k, np.float32))
        assert (d.info.frame, d.info.frames) == (f, 3)
    refused(data, "frame 3", "out of range", "3 frame", field="frame", frame=3)


def test_single_frame_takes_frame_0_only():
    data = grey8_to_dicom(grey8())
    assert decode_dicom(data, MAX, frame=0).info.frame == 0
    refused(data, "frame 1", "out of range", field="frame", frame=1)


# ---- refusals -------------------------------------------------------------------------------


def planted(img: np.ndarray | None = None, **kw) -> bytes:
    return grey8_to_dicom(grey8() if img is None else img, **PLANTED, **kw)


def test_refusals_name_their_cause_and_no_patient_data():
    data = planted()
    assert PLANTED_NAME.encode() in data and PLANTED_ID.encode() in data  # the files do carry them
    refused(rewrite(data, lambda ds: delattr(ds, "PixelData")), "no pixel data")

    def float_pixels(ds):
        del ds.PixelData
        ds.BitsAllocated = ds.BitsStored = 32
        ds.FloatPixelData = np.zeros(48 * 40, "<f4").tobytes()

    refused(rewrite(data, float_pixels), "float pixel data")
    refused(rewrite(data, lambda ds: setattr(ds, "PhotometricInterpretation", "YBR_PARTIAL_420")), "YBR_PARTIAL_420")
    refused(rewrite(data, lambda ds: setattr(ds, "PhotometricInterpretation", "HSV")), "HSV")
    # a photometric interpretation holding the patient's name is refused without echoing it
    refused(rewrite(data, lambda ds: setattr(ds, "PhotometricInterpretation", PLANTED_NAME)), "photometric")
    refused(rewrite(data, lambda ds: delattr(ds, "Rows")), "Rows")
    refused(data, "40x48 = 1920 pixels", "over the limit of 1919", max_pixels=1919)
    rgb16 = write_dicom(np.zeros((8, 8, 3), np.uint16), bits_stored=16, photometric="RGB", **PLANTED)
    refused(rgb16, "RGB", "16 bits stored")
    refused(rewrite(data, lambda ds: setattr(ds, "VOILUTFunction", "CUBIC")), "VOILUTFunction")
    refused(rewrite(data, lambda ds: setattr(ds, "WindowWidth", 0)), "WindowWidth", "window_center")


def test_unsupported_transfer_syntax_is_named():
    data = planted()

    def mpeg2(ds):
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"

    refused(rewrite(data, mpeg2), "transfer syntax MPEG2 Main Profile / Main Level", "not supported", "RLE Lossless")
    # an unknown UID (same length as explicit little endian's, patched into the file meta)
    patched = data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.999.99999.1.2.1\x00", 1)
    assert patched != data
    refused(patched, "unknown transfer syntax")


def test_truncated_files_are_refused_wherever_cut():
    data = planted()
    causes = set()
    for n in list(range(0, 400, 13)) + list(range(400, len(data), 97)):
        causes.add(refused(data[:n]))
    assert any("pixel data could not be decoded" in c for c in causes)
    assert any("no pixel data" in c for c in causes)


# ---- the payload: the file without its patient data ----------------------------------------

META_KEPT = {
    "FileMetaInformationGroupLength",
    "FileMetaInformationVersion",
    "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "ImplementationVersionName",
}
DATA_KEPT = set(PIXEL_TAGS) | {"SOPClassUID", "SOPInstanceUID", "ModalityLUTSequence", "VOILUTSequence"}

VARIANTS: dict[str, Callable[[], bytes]] = {
    **{f"grey8-{ts.name}": (lambda ts=ts: planted(transfer_syntax=ts)) for ts in LOSSLESS},
    "mono1-rle": lambda: planted(photometric="MONOCHROME1", transfer_syntax=RLELossless),
    "j2k-lossy": lambda: planted(grey8(64, 64), transfer_syntax=JPEG2000),
    "jpeg-baseline": lambda: write_dicom(grey8(), bits_stored=8, transfer_syntax=JPEGBaseline8Bit, **PLANTED),
    "frames-sv1": lambda: write_dicom(
        np.stack([grey8(seed=s).astype(np.int64) * 16 for s in range(3)]), transfer_syntax=JPEGLosslessSV1, **PLANTED
    ),
    "modality-lut": lambda: write_dicom(
        grey8(), bits_stored=8, modality_lut=([256, 0, 16], list(range(0, 1024, 4))), **PLANTED
    ),
    "voi-lut": lambda: write_dicom(
        grey8(), bits_stored=8, rescale_intercept=None, voi_lut=([256, 0, 8], list(range(255, -1, -1))), **PLANTED
    ),
    "sigmoid": lambda: write_dicom(
        grey8().astype(np.int64) * 16, window=(1000.0, 3000.0), voi_function="SIGMOID", **PLANTED
    ),
    "rgb": lambda: write_dicom(np.dstack([grey8()] * 3), bits_stored=8, photometric="RGB", **PLANTED),
    "palette": lambda: write_dicom(
        grey8(),
        bits_stored=8,
        photometric="PALETTE COLOR",
        palette=([256, 0, 16], np.stack([np.arange(256) * 257] * 3)),
        **PLANTED,
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_payload_decodes_bit_identically_and_holds_no_patient_data(variant):
    data = VARIANTS[variant]()
    frame = 1 if variant.startswith("frames") else None
    d = decode_dicom(data, MAX, frame=frame)
    again = decode_dicom(d.payload, MAX, frame=frame)
    assert again.image.mode == d.image.mode and again.image.size == d.image.size
    assert np.asarray(again.image).tobytes() == np.asarray(d.image).tobytes()
    assert again.info == d.info
    original = pydicom.dcmread(io.BytesIO(data))
    copy = pydicom.dcmread(io.BytesIO(d.payload))
    assert {e.keyword for e in copy} <= DATA_KEPT, {e.keyword for e in copy} - DATA_KEPT
    assert {e.keyword for e in copy.file_meta} <= META_KEPT
    assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert copy.PixelData == original.PixelData  # as sent, compressed or not
    for secret in (
        PLANTED_NAME,
        PLANTED_ID,
        "19700101",
        "Zq7",
        original.SOPInstanceUID,
        original.StudyInstanceUID,
        "WHITEBOX TEST",
        "test window",
        "test VOI LUT",
        "test modality LUT",
        "whitebox test study",
    ):
        assert secret.encode() not in d.payload, secret
    assert d.payload != data and len(d.payload) < len(data)
