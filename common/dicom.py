"""DICOM images in (docs/dicom.md): the pixels as a radiologist's viewer shows them, and a copy of the
file without its patient data for the job.

Only DICOM Part 10 files are accepted: the 128-byte preamble followed by ``DICM``. A bare data set
(no preamble, pydicom's ``force=True``) is refused: without the magic bytes almost any byte string
"parses" as some data set, so the format could not be told from a corrupt PNG or JPEG.

Order of operations (PS3.3 C.11): stored values -> Modality LUT (Modality LUT Sequence, else
RescaleSlope/RescaleIntercept) -> VOI (the request's window, else the file's WindowCenter/WindowWidth,
else its VOI LUT Sequence, else the full range of the modality output) -> MONOCHROME1 inversion
(255 - y). The result is a mode ``F`` image with grey levels in [0, 255]. Colour files (RGB, YBR_*,
PALETTE COLOR with 8 bits stored) become 8-bit RGB images; no window applies to them.

Every failure is an :class:`ImageProblem` with a fixed sentence: pydicom's exception text can quote
tag values, which may be patient data, so it never reaches an answer or a log. Values named in a
sentence are numbers or words of DICOM's own vocabulary (a transfer syntax's name, a photometric
interpretation from the standard's list), never free text from the file."""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import pydicom
import pydicom.config
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, generate_uid

from common.decoded import Decoded
from common.window import Window
from schemas.api import AppliedWindow, ImageInfo
from schemas.problems import ImageProblem

# pydicom's validation warnings and log records quote element values (patient data): none is raised
# or logged; every failure becomes one of the fixed sentences below
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
logging.getLogger("pydicom").disabled = True

PREAMBLE = 128
MAGIC = b"DICM"

# the transfer syntaxes decoded here (pydicom natively, or the pylibjpeg plug-ins)
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1 (Process 14, Selection Value 1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
# photometric interpretations the standard defines (or defined) that are refused: named in the answer
OTHER_PHOTOMETRIC = ("YBR_PARTIAL_422", "YBR_PARTIAL_420", "HSV", "ARGB", "CMYK", "XYB")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

# the only attributes the job's copy keeps (everything the pixels and their grey levels need)
PIXEL_TAGS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "RescaleIntercept",
    "RescaleSlope",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
)
LUT_ITEM_TAGS = ("LUTDescriptor", "ModalityLUTType", "LUTData")  # not LUTExplanation (free text)
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")  # the copy's SOP class (a fixed one, not the file's)


def _problem(detail: str, field: str = "image") -> ImageProblem:
    return ImageProblem(detail, field=field)


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then ``DICM`` (files without them are refused)."""
    return len(data) >= PREAMBLE + len(MAGIC) and data[PREAMBLE : PREAMBLE + len(MAGIC)] == MAGIC


def _read(data: bytes, pixels: bool) -> Dataset:
    if not is_dicom(data):
        raise _problem("image is not a DICOM file (no DICM preamble)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)
    except Exception:  # pydicom's messages quote element values: never passed on
        raise _problem("DICOM file could not be read (truncated or corrupt)") from None
    return ds


def _get(ds: Dataset, name: str, default: Any = None) -> Any:
    """An element's value (pydicom converts raw elements when first read: a broken one fails here)."""
    try:
        return ds.get(name, default)
    except Exception:
        raise _problem(f"DICOM attribute {name} could not be read") from None


def _int(ds: Dataset, name: str, default: int | None = None) -> int:
    v = _get(ds, name, default)
    if isinstance(v, MultiValue):
        v = v[0] if len(v) else None
    if v is None or v == "":
        if default is None:
            raise _problem(f"DICOM file lacks the Image Pixel attribute {name}")
        return default
    try:
        return int(v)
    except (TypeError, ValueError):
        raise _problem(f"DICOM attribute {name} is not a number") from None


def _float(ds: Dataset, name: str) -> float | None:
    v = _get(ds, name)
    if isinstance(v, MultiValue):
        v = v[0] if len(v) else None
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise _problem(f"DICOM attribute {name} is not a number") from None
    if not np.isfinite(f):
        raise _problem(f"DICOM attribute {name} is not a finite number")
    return f


def dicom_size(data: bytes) -> tuple[int, int]:
    """(width, height) = (Columns, Rows) of one frame, from the header (no pixel decoded)."""
    ds = _read(data, pixels=False)
    try:
        return _int(ds, "Columns"), _int(ds, "Rows")
    except ImageProblem:
        raise
    except Exception:
        raise _problem("DICOM file could not be read (unexpected content)") from None


def _photometric(ds: Dataset) -> str:
    pi = _get(ds, "PhotometricInterpretation")
    pi = str(pi).strip().upper() if pi is not None else ""
    if not pi:
        raise _problem("DICOM file lacks the Image Pixel attribute PhotometricInterpretation")
    if pi in GREY or pi in COLOUR:
        return pi
    if pi in OTHER_PHOTOMETRIC:
        raise _problem(
            f"DICOM photometric interpretation {pi} is not supported; send MONOCHROME1, MONOCHROME2, RGB, "
            "YBR_FULL, YBR_FULL_422 or PALETTE COLOR"
        )
    raise _problem("DICOM photometric interpretation is not one the standard defines")


def _transfer_syntax(ds: Dataset) -> UID:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not ts:
        raise _problem("DICOM file has no transfer syntax in its file meta information")
    uid = UID(str(ts))
    if str(uid) not in TRANSFER_SYNTAXES:
        name = uid.name if uid.is_transfer_syntax and uid.name != str(uid) else "an unknown transfer syntax"
        raise _problem(
            f"DICOM transfer syntax {name} is not supported; supported: " + ", ".join(TRANSFER_SYNTAXES.values())
        )
    return uid


class _Geometry:
    def __init__(self, ds: Dataset, max_pixels: int) -> None:
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                raise _problem("DICOM float pixel data is not supported; send integer PixelData")
            raise _problem("DICOM file has no pixel data (no PixelData element, or the file is truncated)")
        self.rows, self.cols = _int(ds, "Rows"), _int(ds, "Columns")
        if self.rows < 1 or self.cols < 1:
            raise _problem("DICOM file declares an empty image (Rows or Columns is 0)")
        if self.rows * self.cols > max_pixels:
            raise _problem(
                f"image of {self.cols}x{self.rows} = {self.cols * self.rows} pixels is over the limit of {max_pixels}"
            )
        self.photometric = _photometric(ds)
        self.samples = _int(ds, "SamplesPerPixel", 1)
        want = 1 if self.photometric in GREY or self.photometric == "PALETTE COLOR" else 3
        if self.samples != want:
            raise _problem(f"DICOM {self.photometric} image must have SamplesPerPixel {want}")
        self.allocated = _int(ds, "BitsAllocated")
        self.stored = _int(ds, "BitsStored", self.allocated)
        if self.allocated not in (1, 8, 16, 32) or not 1 <= self.stored <= self.allocated:
            raise _problem("DICOM bits allocated / bits stored are inconsistent (allocated 1, 8, 16 or 32)")
        self.signed = _int(ds, "PixelRepresentation", 0) == 1
        self.frames = _int(ds, "NumberOfFrames", 1)
        if self.frames < 1:
            raise _problem("DICOM NumberOfFrames must be at least 1")

    def frame_index(self, frame: int | None) -> int:
        if frame is None:
            if self.frames > 1:
                raise _problem(
                    f"DICOM file has {self.frames} frames: choose one with the field frame (0 to {self.frames - 1})",
                    field="frame",
                )
            return 0
        if not 0 <= frame < self.frames:
            raise _problem(
                f"frame {frame} is out of range: the file has {self.frames} frame(s) (0 to {self.frames - 1})",
                field="frame",
            )
        return frame


def _pixels(ds: Dataset, index: int, g: _Geometry) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=index if g.frames > 1 else None)
    except Exception:  # the decoders' messages may quote the data set
        raise _problem("DICOM pixel data could not be decoded (truncated or corrupt)") from None
    arr = np.asarray(arr)
    shape = (g.rows, g.cols) if g.samples == 1 else (g.rows, g.cols, 3)
    if arr.shape != shape:
        raise _problem("DICOM pixel data does not match its Rows, Columns and SamplesPerPixel")
    return arr


def _colour(ds: Dataset, arr: np.ndarray, g: _Geometry) -> np.ndarray:
    """8-bit RGB (H, W, 3) of a colour file (pydicom converts YBR to RGB when decoding)."""
    if g.photometric == "PALETTE COLOR":
        if g.stored > 16:
            raise _problem("DICOM PALETTE COLOR image has over 16 bits stored")
        try:
            rgb = np.asarray(apply_color_lut(arr, ds))
        except Exception:
            raise _problem("DICOM palette colour lookup tables are missing or invalid") from None
        if rgb.dtype != np.uint8:  # 16-bit entries: the high byte
            rgb = (rgb.astype(np.uint32) >> 8).astype(np.uint8)
        return rgb
    if g.stored != 8:
        raise _problem(f"DICOM {g.photometric} image with {g.stored} bits stored is not supported; send 8 bits")
    return arr.astype(np.uint8)


def _modality(
    ds: Dataset, arr: np.ndarray, g: _Geometry
) -> tuple[np.ndarray, float, float, float | None, float | None]:
    """Modality LUT -> (values, lo, hi of the output's range, slope, intercept)."""
    lo_in = -(1 << (g.stored - 1)) if g.signed else 0
    hi_in = (1 << (g.stored - 1)) - 1 if g.signed else (1 << g.stored) - 1
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        try:
            out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
            data = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
        except Exception:
            raise _problem("DICOM Modality LUT Sequence is invalid") from None
        return out, float(data.min()), float(data.max()), None, None
    slope = _float(ds, "RescaleSlope")
    intercept = _float(ds, "RescaleIntercept")
    s = 1.0 if slope is None else slope
    b = 0.0 if intercept is None else intercept
    if s == 0:
        raise _problem("DICOM RescaleSlope is 0")
    vals = arr.astype(np.float64) * s + b
    a, c = lo_in * s + b, hi_in * s + b
    return vals, min(a, c), max(a, c), s, b


def _voi(
    ds: Dataset, vals: np.ndarray, lo: float, hi: float, window: tuple[float, float] | None
) -> tuple[np.ndarray, AppliedWindow]:
    """VOI -> (float in [0, 255], the window applied)."""
    if window is not None:
        c, w = window
        return Window(c, w).apply(vals), AppliedWindow(center=c, width=w, source="request")
    c_file, w_file = _float(ds, "WindowCenter"), _float(ds, "WindowWidth")
    if c_file is not None and w_file is not None:
        fn = str(_get(ds, "VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if fn not in VOI_FUNCTIONS:
            raise _problem("DICOM VOILUTFunction is not LINEAR, LINEAR_EXACT or SIGMOID")
        if w_file < (1 if fn == "LINEAR" else 0) or w_file == 0:
            raise _problem(
                "DICOM WindowWidth of the file is not a valid width; send window_center and window_width",
                field="image",
            )
        applied = AppliedWindow(center=c_file, width=w_file, source="file")
        v = vals.astype(np.float64)
        if fn == "LINEAR":
            return Window(c_file, w_file).apply(vals), applied
        if fn == "LINEAR_EXACT":  # PS3.3 C.11.2.1.3.2
            y = ((v - c_file) / w_file + 0.5) * 255.0
        else:  # SIGMOID, PS3.3 C.11.2.1.3.1
            y = 255.0 / (1.0 + np.exp(-4.0 * (v - c_file) / w_file))
        return np.clip(y, 0.0, 255.0).astype(np.float32), applied
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return _voi_lut(ds.VOILUTSequence[0], vals)
    full = Window.full_range(lo, hi)
    return full.apply(vals), AppliedWindow(center=full.center, width=full.width, source="full_range")


def _voi_lut(item: Dataset, vals: np.ndarray) -> tuple[np.ndarray, AppliedWindow]:
    """The first VOI LUT (PS3.3 C.11.2.1.1): input below the first mapped value takes the first entry,
    above the last the last; the output (``bits`` of the descriptor) scaled to [0, 255]. Reported as the
    window of the LUT's input range (its first mapped value, its length)."""
    try:
        desc = [int(x) for x in item.LUTDescriptor]
        n, first, bits = desc[0] or 65536, desc[1], desc[2]
        raw = item.LUTData
        data = np.asarray(raw if not isinstance(raw, bytes) else np.frombuffer(raw, "<u2"), dtype=np.float64)
    except Exception:
        raise _problem("DICOM VOI LUT Sequence is invalid") from None
    if data.size != n or not 1 <= bits <= 16:
        raise _problem("DICOM VOI LUT Sequence is invalid")
    index = np.clip(np.rint(vals) - first, 0, n - 1).astype(np.int64)
    y = np.clip(data[index] / float((1 << bits) - 1) * 255.0, 0.0, 255.0).astype(np.float32)
    return y, AppliedWindow(center=first + n / 2, width=float(n), source="file")


def decode_dicom(
    data: bytes, max_pixels: int, window: tuple[float, float] | None = None, frame: int | None = None
) -> Decoded:
    """DICOM Part 10 bytes -> :class:`Decoded`: a mode ``F`` image in [0, 255] (grey) or 8-bit ``RGB``
    (colour), what was applied, and the file without its patient data as ``payload``. Raises only
    :class:`ImageProblem` with a fixed sentence, its cause dropped (``from None``), so that no traceback
    logged anywhere carries pydicom's text."""
    try:
        return _decode(data, max_pixels, window, frame)
    except ImageProblem:
        raise
    except Exception:
        raise _problem("DICOM file could not be decoded (unexpected content)") from None


def _decode(data: bytes, max_pixels: int, window: tuple[float, float] | None, frame: int | None) -> Decoded:
    ds = _read(data, pixels=True)  # the values only: no pixel is decoded before the checks
    g = _Geometry(ds, max_pixels)
    _transfer_syntax(ds)
    index = g.frame_index(frame)
    arr = _pixels(ds, index, g)
    info: dict[str, Any] = {
        "format": "DICOM",
        "mode": g.photometric,
        "width": g.cols,
        "height": g.rows,
        "bits": g.stored,
        "frame": frame,
        "frames": g.frames,
    }
    if g.photometric in COLOUR:
        img = Image.fromarray(np.ascontiguousarray(_colour(ds, arr, g), dtype=np.uint8))
    else:
        vals, lo, hi, slope, intercept = _modality(ds, arr, g)
        y, applied = _voi(ds, vals, lo, hi, window)
        inverted = g.photometric == "MONOCHROME1"
        if inverted:
            y = (255.0 - y).astype(np.float32)
        img = Image.fromarray(np.ascontiguousarray(y, dtype=np.float32))
        info.update(window=applied, rescale_slope=slope, rescale_intercept=intercept, inverted=inverted)
    return Decoded(image=img, info=ImageInfo(**info), payload=deidentify(ds))


def deidentify(ds: Dataset) -> bytes:
    """A new DICOM file holding only what decoding needs (:data:`PIXEL_TAGS`, the LUT sequences' numbers,
    the transfer syntax); PixelData as sent, compressed or not. No patient, study, series, institution,
    device, date, UID of the original or private attribute is copied: the SOP class is a fixed one and
    the instance UID a fresh random one."""
    out = Dataset()
    for name in PIXEL_TAGS:
        if name in ds:
            out.add(ds[name])
    for seq in ("ModalityLUTSequence", "VOILUTSequence"):
        if seq in ds and len(ds[seq].value):
            item = Dataset()
            for name in LUT_ITEM_TAGS:
                if name in ds[seq].value[0]:
                    item.add(ds[seq].value[0][name])
            setattr(out, seq, [item])
    uid = generate_uid()
    out.SOPClassUID, out.SOPInstanceUID = SECONDARY_CAPTURE, uid
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SECONDARY_CAPTURE, uid
    out.file_meta = meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    return buf.getvalue()
