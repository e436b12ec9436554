"""The batch pipeline: per-method reduction defaults, and a batch of jobs giving the same
maps as each job alone (the worker's dynamic batching must not change results)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from schemas.api import ExplainRequest
from tests.helpers import demo_model, random_image, seeded_torchvision
from workers.serving.pipeline import Item, run_batch
from workers.serving.render import decode_array


def request(**kw) -> dict:
    """A validated request body as the worker receives it (the image travels separately here)."""
    return ExplainRequest.model_validate({"model": "m", "image": "unused", **kw}).model_dump()


def test_smoothgrad_reduces_like_its_base():
    m = seeded_torchvision("resnet18")
    img = Image.fromarray(random_image(64, 64))
    req = {"outputs": ["array"], "normalize": "none"}
    over_ig = Item(
        request=request(
            **req,
            methods=[
                {
                    "name": "smoothgrad",
                    "params": {"base": "integrated_gradients", "samples": 2, "base_params": {"steps": 4}},
                }
            ],
        ),
        image=img,
    )
    over_sal = Item(request=request(**req, methods=[{"name": "smoothgrad", "params": {"samples": 2}}]), image=img)
    run_batch(m, [over_ig, over_sal])
    assert over_ig.result["explanations"][0]["raw_range"][0] < 0  # signed sum over channels
    assert over_sal.result["explanations"][0]["raw_range"][0] >= 0  # max |.| over channels


def test_batch_equals_single_jobs():
    m = demo_model()
    reqs = [request(methods=["saliency", "gradcam", "fem"], outputs=["array"], target=t) for t in (1, "predicted", 4)]
    imgs = [Image.fromarray(random_image(64 + 8 * i, 64, seed=i)) for i in range(3)]
    batch = [Item(request=r, image=i) for r, i in zip(reqs, imgs)]
    run_batch(m, batch)
    for r, i, b in zip(reqs, imgs, batch):
        single = Item(request=r, image=i)
        run_batch(m, [single])
        assert b.result["target"] == single.result["target"]
        for eb, es in zip(b.result["explanations"], single.result["explanations"]):
            np.testing.assert_allclose(decode_array(eb["array"]), decode_array(es["array"]), atol=1e-5)


def test_bad_target_fails_only_its_job():
    m = demo_model()
    img = Image.fromarray(random_image(64, 64))
    good = Item(request=request(methods=["fem"], outputs=["array"]), image=img)
    bad = Item(request=request(methods=["fem"], outputs=["array"], target=99), image=img)
    run_batch(m, [good, bad])
    assert good.result is not None and bad.result is None and bad.error.status == 422
