"""Real DICOM test files, written with pydicom (Part 10: preamble, file meta, ``enforce_file_format``).

:func:`write_dicom` writes grey (or colour) pixels under any transfer syntax this machine can encode:
uncompressed (explicit / implicit VR little endian, explicit big endian, deflated), RLE Lossless and
JPEG 2000 (pydicom's encoders), JPEG Baseline and Extended (Pillow's encoder, 8 bits), JPEG Lossless Process 14
(selection value 1: :func:`jpeg_lossless_sv1`, written here from ITU-T T.81 Annex H, since no encoder
is installed). JPEG-LS cannot be encoded here. :func:`grey8_to_dicom` turns an 8-bit grey image into a
12-bit stored file whose own window maps it back to the same 255 levels exactly."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
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
    generate_uid,
)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
ENCODED_BY_PYDICOM = (RLELossless, JPEG2000Lossless, JPEG2000)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PRIVATE_CREATOR = "WHITEBOX TEST"

# the 8-bit helper's numbers: stored = X0 + 16 k (k in 0..255), modality = stored + INTERCEPT, and the
# linear window (PS3.3 C.11.2.1.2.1) of width 4081 centred at X0 + INTERCEPT + 2040.5 maps k back to k
GREY8_X0 = 8
GREY8_INTERCEPT = -1024.0
GREY8_WINDOW = (GREY8_X0 + GREY8_INTERCEPT + 2040.5, 4081.0)


def write_dicom(
    pixels: np.ndarray,
    path: str | Path | None = None,
    *,
    bits_stored: int = 12,
    rescale_intercept: float | None = -1024.0,
    rescale_slope: float | None = 1.0,
    window: tuple[float, float] | tuple[list[float], list[float]] | None = None,
    voi_function: str | None = None,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    signed: bool = False,
    modality_lut: tuple[list[int], list[int]] | None = None,
    voi_lut: tuple[list[int], list[int]] | None = None,
    palette: tuple[list[int], np.ndarray] | None = None,
    number_of_frames: bool | None = None,
    patient_name: str | None = "Test^Patient",
    patient_id: str | None = "WB-TEST-0",
    birth_date: str | None = None,
    institution: str | None = None,
    private_value: str | None = None,
    referring_physician: str | None = None,
    jpeg_quality: int = 95,
) -> bytes:
    """A DICOM Part 10 file of ``pixels`` -> its bytes (also written to ``path`` when given).

    ``pixels``: (H, W) one grey frame, (F, H, W) F frames (NumberOfFrames F), (H, W, 3) or (F, H, W, 3)
    8-bit RGB (``photometric="RGB"``); grey values are the stored values (``signed``: two's complement,
    PixelRepresentation 1). ``window``: WindowCenter/WindowWidth (lists for a multi-valued pair);
    ``modality_lut`` / ``voi_lut``: (LUTDescriptor, LUTData) of a one-item Modality / VOI LUT Sequence
    (the modality LUT replaces the rescale tags); ``palette``: (descriptor, (3, n) 16-bit entries) of a
    PALETTE COLOR file. ``number_of_frames``: force the tag for a single frame (None: when F > 1).
    Patient data: PatientName, PatientID, PatientBirthDate, InstitutionName, ReferringPhysicianName and a
    private element (``private_value``), each written when not None."""
    a = np.asarray(pixels)
    colour = photometric in ("RGB", "YBR_FULL")
    multi = a.ndim == (4 if colour else 3)
    frames = a.shape[0] if multi else 1
    allocated = 8 if bits_stored <= 8 else 16

    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.StudyDate, ds.StudyDescription = "CT", "20260101", "whitebox test study"
    _patient(ds, patient_name, patient_id, birth_date, institution, private_value)
    if referring_physician is not None:
        ds.ReferringPhysicianName = referring_physician
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = a.shape[-3:-1] if colour else a.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if multi or number_of_frames:
        ds.NumberOfFrames = frames
    if modality_lut is None:
        if rescale_intercept is not None:
            ds.RescaleIntercept = rescale_intercept
        if rescale_slope is not None:
            ds.RescaleSlope = rescale_slope
    _luts(ds, window, voi_function, modality_lut, voi_lut, palette)
    dtype = np.uint8 if allocated == 8 else (np.int16 if signed else np.uint16)
    frames_a = a.astype(dtype) if multi else a.astype(dtype)[None]
    _pixel_data(ds, frames_a, UID(transfer_syntax), bits_stored, multi, colour, jpeg_quality)

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _patient(
    ds: Dataset, name: str | None, pid: str | None, birth: str | None, institution: str | None, private: str | None
) -> None:
    if name is not None:
        ds.PatientName = name
    if pid is not None:
        ds.PatientID = pid
    if birth is not None:
        ds.PatientBirthDate = birth
    if institution is not None:
        ds.InstitutionName = institution
    if private is not None:
        ds.private_block(0x0011, PRIVATE_CREATOR, create=True).add_new(0x01, "LO", private)


def _luts(
    ds: Dataset,
    window: Any,
    voi_function: str | None,
    modality_lut: tuple[list[int], list[int]] | None,
    voi_lut: tuple[list[int], list[int]] | None,
    palette: tuple[list[int], np.ndarray] | None,
) -> None:
    if modality_lut is not None:
        item = Dataset()
        item.add_new("LUTDescriptor", "US", list(modality_lut[0]))
        item.ModalityLUTType, item.LUTExplanation = "HU", "test modality LUT"
        item.add_new("LUTData", "US", list(modality_lut[1]))
        ds.ModalityLUTSequence = [item]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
        ds.WindowCenterWidthExplanation = "test window"
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        item.add_new("LUTDescriptor", "US", list(voi_lut[0]))
        item.add_new("LUTData", "US", list(voi_lut[1]))
        item.LUTExplanation = "test VOI LUT"
        ds.VOILUTSequence = [item]
    if palette is not None:
        desc, entries = palette
        for i, c in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{c}PaletteColorLookupTableDescriptor", desc)
            ds[f"{c}PaletteColorLookupTableData"] = pydicom.DataElement(
                f"{c}PaletteColorLookupTableData", "OW", np.asarray(entries[i], "<u2").tobytes()
            )


def _pixel_data(
    ds: Dataset, frames: np.ndarray, ts: UID, bits_stored: int, multi: bool, colour: bool, quality: int
) -> None:
    """PixelData of ``frames`` (F, H, W[, 3]) under ``ts``, and the file meta."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    eight = frames.dtype == np.uint8
    if ts in UNCOMPRESSED or ts in ENCODED_BY_PYDICOM:
        order = ">" if ts == ExplicitVRBigEndian else "<"
        ds.PixelData = frames.astype(frames.dtype.newbyteorder(order)).tobytes()
        ds["PixelData"].VR = "OB" if eight else "OW"
        if ts in ENCODED_BY_PYDICOM:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            kw: dict[str, Any] = {"j2k_cr": [20]} if ts == JPEG2000 else {}
            ds.compress(ts, frames if multi else frames[0], generate_instance_uid=False, **kw)
        return
    if ts in (JPEGBaseline8Bit, JPEGExtended12Bit):  # an 8-bit baseline stream is also Process 2
        if not eight:
            raise ValueError("Pillow's JPEG encoder writes 8-bit samples")
        encoded = [_pillow_jpeg(f, quality) for f in frames]
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"  # what Pillow's encoder stores
    elif ts in (JPEGLosslessSV1, JPEGLossless):
        if colour:
            raise ValueError("the lossless JPEG writer here is for grey images")
        mask = (1 << bits_stored) - 1
        encoded = [jpeg_lossless_sv1(f.astype(np.int64) & mask, bits_stored) for f in frames]
    else:
        raise ValueError(f"no encoder here for {ts.name}")
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def grey8_to_dicom(
    img8: np.ndarray, path: str | Path | None = None, *, photometric: str = "MONOCHROME2", **kw: Any
) -> bytes:
    """An 8-bit grey image (uint8 H x W) as a 12-bit stored CT-like DICOM whose own window gives back the
    same 255 levels: stored = 8 + 16 k (MONOCHROME1: 8 + 16 (255 - k), inverted after the window),
    RescaleIntercept -1024, WindowCenter/Width (1024.5, 4081). ``kw`` goes to :func:`write_dicom`
    (e.g. ``transfer_syntax``, ``patient_name``)."""
    k = np.asarray(img8, dtype=np.int64)
    if photometric == "MONOCHROME1":
        k = 255 - k
    elif photometric != "MONOCHROME2":
        raise ValueError("MONOCHROME1 or MONOCHROME2")
    stored = GREY8_X0 + 16 * k
    return write_dicom(
        stored,
        path,
        bits_stored=12,
        rescale_intercept=GREY8_INTERCEPT,
        rescale_slope=1.0,
        window=GREY8_WINDOW,
        photometric=photometric,
        **kw,
    )


def _pillow_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ---- JPEG Lossless, Process 14, first-order prediction (ITU-T T.81 Annex H) -----------------------


class _Bits:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, length: int) -> None:
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.n += length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # byte stuffing (T.81 F.1.2.3)
        self.acc &= (1 << self.n) - 1

    def flush(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with 1-bits
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def jpeg_lossless_sv1(frame: np.ndarray, precision: int) -> bytes:
    """One grey frame (H x W of values in [0, 2**precision)) as a lossless JPEG (SOF3, predictor 1,
    point transform 0). The Huffman table gives each difference category 0-16 a 5-bit code (a valid,
    if not optimal, table: the 17 codes 00000-10000, none all ones)."""
    h, w = frame.shape
    x = np.asarray(frame, dtype=np.int64)
    if x.min() < 0 or x.max() >= 1 << precision:
        raise ValueError("values outside the precision")
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first line: the left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the one above
    pred[1:, 1:] = x[1:, :-1]  # predictor 1 elsewhere: Ra
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)  # modulo 2**16, in [-32767, 32768]
    bits = _Bits()
    for d in diff.ravel().tolist():
        ssss = 16 if d == 32768 else abs(d).bit_length()
        bits.put(ssss, 5)
        if 0 < ssss < 16:
            bits.put(d if d > 0 else d + (1 << ssss) - 1, ssss)
    scan = bits.flush()
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5
    dht = _segment(0xC4, bytes([0x00, *counts, *range(17)]))
    sof = _segment(0xC3, bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0]))
    sos = _segment(0xDA, bytes([1, 1, 0x00, 1, 0, 0]))  # Ns, Cs, Td/Ta, Ss = predictor 1, Se, Ah/Al
    return b"\xff\xd8" + sof + dht + sos + scan + b"\xff\xd9"
