"""Rendering and post-processing: jet against matplotlib's, reduction, normalisation."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from workers.explain.postprocess import normalize, reduce_channels
from workers.serving import render


def test_jet_matches_matplotlib():
    from matplotlib import colormaps

    # matplotlib's LUT entry i is the ramp sampled at i / 255; compare there, to uint8 rounding
    idx = np.arange(256)
    ours = render.colorize((idx / 255)[None], "jet")[0].astype(float) / 255
    ref = colormaps["jet"](idx)[:, :3]
    assert np.abs(ours - ref).max() <= 0.5 / 255 + 1e-9


def test_png_outputs_roundtrip():
    m = np.linspace(0, 1, 12 * 20).reshape(12, 20)
    png = Image.open(io.BytesIO(base64.b64decode(render.heatmap_png(m))))
    assert png.size == (20, 12) and png.mode == "RGB"
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(render.mask_png(m)))))
    assert mask[0, 0] == 0 and mask[-1, -1] == 255
    arr = render.decode_array(render.array_out(m.astype(np.float32)))
    assert np.array_equal(arr, m.astype(np.float32))


def test_reduce_and_normalize():
    a = torch.tensor([[[[1.0, -3.0]], [[-2.0, 1.0]]]])  # (1, 2, 1, 2)
    assert reduce_channels(a, "max_abs").flatten().tolist() == [2.0, 3.0]
    assert reduce_channels(a, "sum").flatten().tolist() == [-1.0, -2.0]
    m = torch.tensor([[[-2.0, 0.0, 2.0]]])
    assert normalize(m, "minmax").flatten().tolist() == [0.0, 0.5, 1.0]
    assert normalize(m, "abs_max").flatten().tolist() == [-1.0, 0.0, 1.0]
    assert torch.equal(normalize(torch.ones(1, 2, 2), "minmax"), torch.zeros(1, 2, 2))
