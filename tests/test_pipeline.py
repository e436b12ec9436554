"""The batch pipeline: per-method reduction defaults, and a batch of jobs giving the same
maps as each job alone (the worker's dynamic batching must not change results)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from schemas.api import ExplainRequest, Timings
from tests.helpers import demo_model, random_image, seeded_torchvision
from workers.errors import TargetError
from workers.serving.pipeline import Item, run_batch
from workers.serving.render import decode_array
from workers.serving.targets import resolve_target


def request(**kw) -> ExplainRequest:
    """A validated request as the worker receives it (the image travels separately here)."""
    return ExplainRequest.model_validate({"model": "m", "image": "unused", **kw})


def item(model, image: Image.Image, **kw) -> Item:
    """An item as the worker makes it from a job: the target resolved once, before the pipeline."""
    req = request(**kw)
    return Item(request=req, image=image, target_index=resolve_target(model, req.target))


def test_smoothgrad_reduces_like_its_base():
    m = seeded_torchvision("resnet18")
    img = Image.fromarray(random_image(64, 64))
    req = {"outputs": ["array"], "normalize": "none"}
    over_ig = item(
        m,
        img,
        **req,
        methods=[
            {
                "name": "smoothgrad",
                "params": {"base": "integrated_gradients", "samples": 2, "base_params": {"steps": 4}},
            }
        ],
    )
    over_sal = item(m, img, **req, methods=[{"name": "smoothgrad", "params": {"samples": 2}}])
    run_batch(m, [over_ig, over_sal])
    assert over_ig.result.explanations[0].raw_range[0] < 0  # signed sum over channels
    assert over_sal.result.explanations[0].raw_range[0] >= 0  # max |.| over channels


def test_batch_equals_single_jobs():
    m = demo_model()
    imgs = [Image.fromarray(random_image(64 + 8 * i, 64, seed=i)) for i in range(3)]
    kws = [dict(methods=["saliency", "gradcam", "fem"], outputs=["array"], target=t) for t in (1, "predicted", 4)]
    batch = [item(m, i, **kw) for kw, i in zip(kws, imgs)]
    run_batch(m, batch)
    for kw, i, b in zip(kws, imgs, batch):
        single = item(m, i, **kw)
        run_batch(m, [single])
        assert b.result.target == single.result.target
        assert b.result.prediction.class_index == single.result.prediction.class_index
        for eb, es in zip(b.result.explanations, single.result.explanations, strict=True):
            np.testing.assert_allclose(decode_array(eb.array), decode_array(es.array), atol=1e-5)


def test_bad_target_fails_only_its_job():
    """A target index the model does not have (a job can carry any) fails that item alone."""
    m = demo_model()
    img = Image.fromarray(random_image(64, 64))
    good = item(m, img, methods=["fem"], outputs=["array"])
    bad = Item(request=request(methods=["fem"], outputs=["array"]), image=img, target_index=99)
    run_batch(m, [good, bad])
    assert good.result is not None and bad.result is None and bad.error.status == 422


def test_target_index_is_what_the_pipeline_explains():
    """The pipeline explains ``target_index`` (the request's ``target`` was resolved before it)."""
    m = demo_model()
    img = Image.fromarray(random_image(64, 64))
    it = Item(request=request(methods=["fem"], target="predicted"), image=img, target_index=3)
    run_batch(m, [it])
    assert it.result.target.class_index == 3 and it.result.target.label == m.labels[3]


def test_resolve_target():
    m = demo_model()
    assert resolve_target(m, "predicted") is None
    assert resolve_target(m, 2) == 2 and resolve_target(m, "2") == 2
    assert resolve_target(m, m.labels[4]) == 4
    with pytest.raises(TargetError):
        resolve_target(m, m.num_classes)
    with pytest.raises(TargetError):
        resolve_target(m, "no such class")


def test_response_defaults_come_from_the_request():
    """The outputs, colormap and top_k of the response are the request's (and its defaults)."""
    m = demo_model()
    img = Image.fromarray(random_image(48, 40))
    it = item(m, img, methods=["fem"])
    run_batch(m, [it])
    req = it.request
    body = it.result.response("j", Timings(queue_ms=0.0, compute_ms=1.0)).model_dump(exclude_none=True)
    (ex,) = body["explanations"]
    assert set(req.outputs) == {"heatmap_png"} and "heatmap_png" in ex and "array" not in ex
    assert len(body["prediction"]["top_k"]) == min(req.top_k, m.num_classes)
    assert body["id"] == "j" and body["model"] == m.name
