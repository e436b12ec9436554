"""The gateway: validates requests, enqueues jobs on the model's Redis stream and
answers when the worker has stored the result (DESIGN.md §3)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.images import decode_image
from common.telemetry import GatewayMetrics
from schemas import queue as q
from schemas.api import CompareRequest, EvaluateRequest, ExplainRequest, JobAccepted
from schemas.methods import CATALOG
from schemas.problems import (
    CancelledProblem,
    MethodProblem,
    NotFound,
    Overloaded,
    Problem,
    TargetProblem,
    Timeout,
    Unauthorized,
    Unavailable,
    ValidationProblem,
)
from schemas.registry import Registry, load_registry
from schemas.settings import Settings
from service.limits import BodyLimit

log = logging.getLogger("whitebox.gateway")
PROBLEM_JSON = "application/problem+json"


def problem_response(p: Problem) -> JSONResponse:
    return JSONResponse(p.problem(), status_code=p.status, media_type=PROBLEM_JSON, headers=p.headers or None)


def clean_errors(errors: list[dict]) -> list[dict]:
    """pydantic errors without the (possibly huge) input values."""
    return [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors
    ]


def validation_problem(e: ValidationError | RequestValidationError, prefix: tuple = ()) -> ValidationProblem:
    errs = clean_errors(e.errors())
    for err in errs:
        err["loc"] = [*prefix, *err["loc"]]
    detail = "; ".join(f"{'.'.join(x['loc'])}: {x['msg']}" for x in errs[:5])
    return ValidationProblem(detail or "invalid request", errors=errs)


class Gateway:
    """State shared by the routes: settings, registry, Redis, result waiters, metrics."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry: Registry = load_registry(settings.models_path)
        self.labels = {m.name: self.registry.labels_of(m) for m in self.registry.models}
        self.redis: aioredis.Redis | None = None
        self.waiters: dict[str, asyncio.Future] = {}
        self.listener: asyncio.Task | None = None
        self.prom = CollectorRegistry()
        self.metrics = GatewayMetrics(self.prom)

    async def start(self) -> None:
        if not self.settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (the all-in-one `whitebox serve` starts an embedded Redis)")
        self.redis = aioredis.from_url(self.settings.redis_url, decode_responses=True, max_connections=512)
        self.listener = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self.listener:
            self.listener.cancel()
            try:
                await self.listener
            except (asyncio.CancelledError, Exception):
                pass
        if self.redis is not None:
            await self.redis.aclose()

    async def _listen(self) -> None:
        """One pub/sub connection resolves every waiting request; polling covers lost messages."""
        while True:
            try:
                ps = self.redis.pubsub(ignore_subscribe_messages=True)
                await ps.subscribe(q.EVENTS_CHANNEL)
                async for msg in ps.listen():
                    fut = self.waiters.get(msg.get("data"))
                    if fut is not None and not fut.done():
                        fut.set_result(True)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # reconnect after a Redis hiccup
                log.warning("event listener: %s", e)
                await asyncio.sleep(0.5)

    # ---- validation beyond the schema ---------------------------------------------------
    async def card(self, model: str) -> dict | None:
        raw = await self.redis.get(q.model_key(model))
        return json.loads(raw) if raw else None

    async def check(self, model: str, target: int | str, methods: list) -> None:
        """Model known, target in range, each method applicable with its layer (from the worker's card)."""
        entry = self.registry.get(model)
        if entry is None:
            raise NotFound(
                f"unknown model {model!r}; models: {', '.join(m.name for m in self.registry.models)}", field="model"
            )
        labels = self.labels[model]
        t = target
        if isinstance(t, str) and t != "predicted":
            if t.isdigit():
                t = int(t)
            elif t not in labels:
                raise TargetProblem(f"unknown class label {t!r}; labels: {', '.join(labels)}", field="target")
        if isinstance(t, int) and not 0 <= t < entry.num_classes:
            raise TargetProblem(f"class index {t} out of range 0..{entry.num_classes - 1}", field="target")
        card = await self.card(model)
        if card is not None:
            layers = {layer["name"] for layer in card.get("layers", [])}
            unsupported = card.get("unsupported_methods", {})
            for i, call in enumerate(methods):
                if call.name in unsupported:
                    raise MethodProblem(
                        f"{call.name} cannot be applied to model {model!r}: {unsupported[call.name]}",
                        field=f"methods.{i}.name",
                    )
                layer = call.params.get("layer")
                if layer is not None and layer not in layers:
                    raise MethodProblem(
                        f"unknown layer {layer!r} for model {model!r}; usable layers: {', '.join(sorted(layers))}",
                        field=f"methods.{i}.params.layer",
                    )

    def image_size(self, b64: str, field: str = "image") -> tuple[int, int]:
        try:
            return decode_image(b64, self.settings.max_image_pixels).size
        except Problem as e:
            e.field = field
            e.errors = None
            raise

    # ---- queue -------------------------------------------------------------------------
    async def enqueue(self, model: str, request: dict, size: tuple[int, int], kind: str = "explain") -> str:
        stream = q.stream_key(model)
        depth = await self.redis.xlen(stream)
        self.metrics.queue_depth.labels(model).set(depth)
        if depth >= self.settings.max_queue_depth:
            self.metrics.rejected.labels("queue_full").inc()
            raise Overloaded(
                f"{depth} jobs are queued for {model!r} (limit {self.settings.max_queue_depth}); retry later",
                headers={"Retry-After": "1"},
            )
        job = q.JobMessage(id=q.new_job_id(), model=model, request=request, image_size=size, kind=kind)
        ttl = self.settings.result_ttl_s
        p = self.redis.pipeline(transaction=False)
        p.hset(
            q.job_key(job.id),
            mapping={
                "status": "queued",
                "progress": "0",
                "model": model,
                "kind": kind,
                "created": f"{job.enqueued_at:.6f}",
            },
        )
        p.expire(q.job_key(job.id), ttl)
        p.xadd(stream, job.encode())
        await p.execute()
        return job.id

    async def wait(self, job_id: str, timeout: float) -> dict | None:
        fut = self.waiters.setdefault(job_id, asyncio.get_running_loop().create_future())
        deadline = time.monotonic() + timeout
        try:
            while True:
                raw = await self.redis.get(q.result_key(job_id))
                if raw:
                    return json.loads(raw)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(asyncio.shield(fut), min(left, 1.0))
                except TimeoutError:
                    pass
        finally:
            self.waiters.pop(job_id, None)


def result_body(payload: dict, started: float) -> dict:
    body = payload["response"]
    body.setdefault("timings", {})["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return body


def payload_problem(payload: dict) -> Problem:
    prob = payload.get("problem") or {}
    p = Problem(prob.get("detail", "failed"), errors=prob.get("errors"))
    p.status = int(prob.get("status", 500))
    p.title = prob.get("title", "Explanation failed")
    p.slug = prob.get("type", "").rsplit("/", 1)[-1] or "worker-failure"
    return p


async def parse_explain(request: Request) -> ExplainRequest:
    """JSON body, or multipart/form-data with the image as a file field."""
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            data: dict[str, Any] = {}
            for key, value in form.multi_items():
                if key == "image" and hasattr(value, "read"):
                    data["image"] = base64.b64encode(await value.read()).decode()
                elif key in ("methods", "outputs"):
                    v = value.strip()
                    data[key] = (
                        json.loads(v)
                        if v.startswith("[")
                        else data.get(key, []) + [json.loads(v) if v.startswith("{") else v]
                    )
                elif key in ("top_k",):
                    data[key] = int(value) if str(value).isdigit() else value
                elif key == "target":
                    data[key] = int(value) if str(value).isdigit() else value
                else:
                    data[key] = value
        else:
            data = await json_object(request)
    except json.JSONDecodeError as e:
        raise ValidationProblem(f"a form field is not valid JSON: {e}")
    return validated(ExplainRequest, data)


async def json_object(request: Request) -> dict:
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValidationProblem(f"body is not valid JSON: {e}")
    if not isinstance(data, dict):
        raise ValidationProblem("body must be a JSON object")
    return data


def validated(model_cls, data: dict, prefix: tuple = ("body",)):
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise validation_problem(e, prefix)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    gw = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        yield
        await gw.stop()

    app = FastAPI(
        title="Whitebox",
        version="1.0",
        description="Pixel relevance maps for CNN image classifiers (white-box methods survey, JEI 2021)",
        lifespan=lifespan,
    )
    app.state.gateway = gw

    async def require_key(request: Request) -> None:
        if not settings.api_keys:
            return
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if key not in settings.api_keys:
            raise Unauthorized(
                "missing or invalid API key (Authorization: Bearer <key> or X-API-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return problem_response(validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        p = Problem(str(exc.detail))
        p.status, p.title, p.slug = exc.status_code, str(exc.detail), "http-" + str(exc.status_code)
        return problem_response(p)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error")
        return problem_response(Problem(f"internal error: {type(exc).__name__}"))

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        gw.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        gw.metrics.latency.labels(path).observe(time.perf_counter() - t0)
        return response

    auth = [Depends(require_key)]

    async def submit(req: ExplainRequest) -> str:
        await gw.check(req.model, req.target, req.methods)
        return await gw.enqueue(req.model, req.model_dump(), gw.image_size(req.image))

    async def finish(job_id: str, started: float, wait: bool):
        if not wait:
            return JSONResponse(
                {"id": job_id, "status": "queued"}, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"}
            )
        payload = await gw.wait(job_id, settings.request_timeout_s)
        if payload is None:
            await gw.redis.set(q.cancel_key(job_id), "timeout", ex=settings.result_ttl_s)
            raise Timeout(
                f"no result within {settings.request_timeout_s:g} s; the job was cancelled "
                "(use POST /v1/jobs, or ?wait=false, for long work)"
            )
        if payload.get("status") != "done":
            raise payload_problem(payload)
        return JSONResponse(result_body(payload, started))

    @app.post(
        "/v1/evaluate",
        dependencies=auth,
        tags=["evaluate"],
        summary="Survey §7 metrics of methods on images (?wait=false: run as a job)",
    )
    async def evaluate(request: Request, wait: bool = True):
        started = time.perf_counter()
        req = validated(EvaluateRequest, await json_object(request))
        await gw.check(req.model, req.target, req.methods)
        sizes = [gw.image_size(img, f"images.{i}") for i, img in enumerate(req.images)]
        job_id = await gw.enqueue(req.model, req.model_dump(), sizes[0], kind="evaluate")
        return await finish(job_id, started, wait)

    @app.post(
        "/v1/compare",
        dependencies=auth,
        tags=["evaluate"],
        summary="Map-vs-map metrics: two maps, or two methods on one image",
    )
    async def compare(request: Request, wait: bool = True):
        started = time.perf_counter()
        req = validated(CompareRequest, await json_object(request))
        if req.model is not None:
            await gw.check(req.model, req.target, req.methods or [])
        size = gw.image_size(req.image) if req.image else (0, 0)
        model = req.model or gw.registry.models[0].name  # two maps: any worker computes them
        job_id = await gw.enqueue(model, req.model_dump(), size, kind="compare")
        return await finish(job_id, started, wait)

    @app.post(
        "/v1/explain",
        dependencies=auth,
        tags=["explain"],
        summary="Explain one image synchronously (JSON or multipart/form-data)",
    )
    async def explain(request: Request):
        started = time.perf_counter()
        req = await parse_explain(request)
        return await finish(await submit(req), started, wait=True)

    @app.post("/v1/jobs", status_code=202, dependencies=auth, tags=["jobs"], response_model=JobAccepted)
    async def create_job(request: Request):
        req = await parse_explain(request)
        job_id = await submit(req)
        return JSONResponse(
            {"id": job_id, "status": "queued"}, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"}
        )

    async def job_state(job_id: str) -> dict:
        h = await gw.redis.hgetall(q.job_key(job_id))
        if not h:
            raise NotFound(f"no job {job_id!r} (unknown, or its result expired)")
        state: dict[str, Any] = {
            "id": job_id,
            "status": h.get("status", "queued"),
            "progress": float(h.get("progress", 0) or 0),
            "model": h.get("model"),
        }
        if state["status"] in ("done", "failed", "cancelled"):
            raw = await gw.redis.get(q.result_key(job_id))
            if raw:
                payload = json.loads(raw)
                if payload.get("status") == "done":
                    body = payload["response"]
                    body["timings"]["total_ms"] = round(
                        (float(h.get("finished", 0)) - float(h.get("created", 0))) * 1000, 3
                    )
                    state["result"] = body
                else:
                    state["error"] = payload.get("problem")
            elif state["status"] == "cancelled":
                state["error"] = CancelledProblem("the job was cancelled").problem()
        return state

    @app.get("/v1/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    async def get_job(job_id: str):
        return JSONResponse(await job_state(job_id))

    @app.delete("/v1/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    async def cancel_job(job_id: str):
        h = await gw.redis.hgetall(q.job_key(job_id))
        if not h:
            raise NotFound(f"no job {job_id!r} (unknown, or its result expired)")
        if h.get("status") in ("done", "failed", "cancelled"):
            return JSONResponse(await job_state(job_id))
        ttl = settings.result_ttl_s
        p = gw.redis.pipeline(transaction=False)
        p.set(q.cancel_key(job_id), "client", ex=ttl)
        if h.get("status") == "queued":
            p.hset(q.job_key(job_id), "status", "cancelled")
        await p.execute()
        return JSONResponse(await job_state(job_id), status_code=202)

    # ---- discovery --------------------------------------------------------------------
    async def model_info(name: str) -> dict:
        entry = gw.registry.get(name)
        card = await gw.card(name)
        if card is not None:
            return {**card, "ready": await model_ready(name)}
        return {
            "name": name,
            "architecture": entry.architecture,
            "description": entry.description,
            "classes": gw.labels[name],
            "num_classes": entry.num_classes,
            "input": {
                "size": list(entry.input.size),
                "mean": entry.input.mean,
                "std": entry.input.std,
                "channels": entry.input.channels,
            },
            "layers": None,
            "default_layer": entry.target_layer,
            "methods": None,
            "ready": False,
        }

    @app.get("/v1/models", dependencies=auth, tags=["discovery"])
    async def list_models():
        return {"models": [await model_info(m.name) for m in gw.registry.models]}

    @app.get("/v1/methods", dependencies=auth, tags=["discovery"])
    async def list_methods():
        return {"methods": [spec.describe() for spec in CATALOG.values()]}

    # ---- health (Open Inference Protocol) ------------------------------------------------
    async def live_models() -> set[str]:
        models: set[str] = set()
        async for key in gw.redis.scan_iter(match=q.WORKER_PATTERN, count=100):
            raw = await gw.redis.get(key)
            if raw:
                models.update(json.loads(raw).get("models", []))
        return models

    async def model_ready(name: str) -> bool:
        return name in await live_models()

    @app.get("/v2/health/live", tags=["health"])
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"])
    async def ready():
        try:
            await gw.redis.ping()
            live_set = await live_models()
        except Exception as e:
            return problem_response(Unavailable(f"Redis unreachable: {e}"))
        missing = [m.name for m in gw.registry.models if m.name not in live_set]
        if missing:
            return problem_response(Unavailable(f"no live worker for: {', '.join(missing)}"))
        return {"ready": True}

    def known(name: str):
        if gw.registry.get(name) is None:
            raise NotFound(f"unknown model {name!r}")

    @app.get("/v2/models/{name}", dependencies=auth, tags=["health"])
    async def oip_model(name: str):
        known(name)
        e = gw.registry.get(name)
        h, w = e.input.size
        return {
            "name": name,
            "versions": ["1"],
            "platform": "pytorch",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": "relevance", "datatype": "FP32", "shape": [-1, -1, -1]},
                {"name": "prediction", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {"input_size": [h, w], "classes": gw.labels[name]},
        }

    @app.get("/v2/models/{name}/ready", dependencies=auth, tags=["health"])
    async def oip_ready(name: str):
        known(name)
        ok = await model_ready(name)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    # ---- KServe V1 -------------------------------------------------------------------
    @app.get("/v1/models/{name}", dependencies=auth, tags=["kserve"])
    async def kserve_model(name: str):
        known(name)
        return {"name": name, "ready": await model_ready(name)}

    @app.post("/v1/models/{name}:explain", dependencies=auth, tags=["kserve"])
    async def kserve_explain(name: str, request: Request):
        started = time.perf_counter()
        known(name)
        body = await json_object(request)
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise ValidationProblem("'instances' must be a non-empty list", field="instances")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise ValidationProblem("'parameters' must be an object", field="parameters")
        reqs = []
        for i, inst in enumerate(instances):
            data = inst
            if isinstance(inst, dict):
                data = inst.get("data", inst.get("b64", inst.get("image")))
                if isinstance(data, dict):
                    data = data.get("b64")
            if not isinstance(data, str):
                raise ValidationProblem(
                    "each instance is a base64 image or {'data'|'b64': <base64>}", field=f"instances.{i}"
                )
            reqs.append(
                validated(
                    ExplainRequest,
                    {"methods": ["gradcam"], "outputs": ["array"], **params, "model": name, "image": data},
                    ("parameters",),
                )
            )
        ids = [await submit(r) for r in reqs]
        payloads = await asyncio.gather(*(gw.wait(j, settings.request_timeout_s) for j in ids))
        preds, expls = [], []
        for job_id, payload in zip(ids, payloads):
            if payload is None:
                await gw.redis.set(q.cancel_key(job_id), "timeout", ex=settings.result_ttl_s)
                raise Timeout(f"no result within {settings.request_timeout_s:g} s")
            if payload.get("status") != "done":
                raise payload_problem(payload)
            r = payload["response"]
            preds.append(r["prediction"])
            expls.append(r["explanations"])
        return {
            "predictions": preds,
            "explanations": expls,
            "timings": {"total_ms": round((time.perf_counter() - started) * 1000, 3)},
        }

    @app.get("/metrics", tags=["health"])
    async def metrics():
        try:
            for m in gw.registry.models:
                gw.metrics.queue_depth.labels(m.name).set(await gw.redis.xlen(q.stream_key(m.name)))
        except Exception:
            pass
        return Response(generate_latest(gw.prom), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
