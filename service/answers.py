"""From an enqueued job to the HTTP answer: 202 with the job's location, or wait for its result (a
timeout cancels the job), and the result's body as the worker stored it plus the gateway's total time;
a job that did not succeed answers its problem (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from schemas.problems import Problem, Timeout
from schemas.queue import JobResult
from schemas.status import JobStatus
from service.state import Gateway

LONG_WORK = "(use POST /v1/jobs, or ?wait=false, for long work)"


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def accepted(job_id: str) -> JSONResponse:
    """202: the job was queued; poll its Location."""
    return JSONResponse(
        {"id": job_id, "status": JobStatus.queued.value}, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"}
    )


def response_of(result: JobResult) -> dict[str, Any]:
    """The body the worker stored for a done job; the job's problem, raised, otherwise."""
    if result.status != JobStatus.done or result.response is None:
        assert result.problem is not None  # JobResult: a job that is not done has a problem
        raise Problem.from_details(result.problem)
    return result.response


async def responses_of(gw: Gateway, job_ids: list[str], hint: str = "") -> list[dict[str, Any]]:
    """The stored bodies of the jobs, waited for together, then deleted from Redis (the client has them).
    A job without a result in the request timeout answers 504, the first that failed its problem; either
    way, and when the client's request ends early, every job not yet finished is cancelled."""
    timeout = gw.settings.request_timeout_s
    waits = {j: asyncio.ensure_future(gw.queue.wait(j, timeout)) for j in job_ids}
    results: dict[str, JobResult] = {}
    try:
        pending = set(waits.values())
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for job_id, fut in waits.items():
                if fut in done and job_id not in results:
                    result = fut.result()
                    if result is None:
                        detail = f"no result within {timeout:g} s"
                        raise Timeout(f"{detail}; the job was cancelled {hint}" if hint else detail)
                    results[job_id] = result
                    response_of(result)  # a failed job ends the request: its problem
        return [response_of(results[j]) for j in job_ids]
    finally:
        await _settle(gw, waits, results)


async def _settle(gw: Gateway, waits: Mapping[str, asyncio.Future[JobResult | None]], results: dict[str, Any]) -> None:
    """Cancel the jobs without a result (and their waits), delete the results that were stored."""
    for j, fut in waits.items():
        if fut.done() and not fut.cancelled() and fut.exception() is None and fut.result() is not None:
            results.setdefault(j, fut.result())
    unfinished = [j for j in waits if j not in results]
    for j in unfinished:
        waits[j].cancel()
    with contextlib.suppress(Exception):  # best effort: Redis may be the reason the request ended
        for j in unfinished:
            await gw.queue.cancel(j, "timeout")
        await gw.queue.forget_results(list(results))


def with_total(body: dict[str, Any], total_ms: float) -> dict[str, Any]:
    body.setdefault("timings", {})["total_ms"] = total_ms
    return body


async def answer(gw: Gateway, job_id: str, received: float, wait: bool = True) -> JSONResponse:
    """202 for ``wait=False``; else the job's response with ``timings.total_ms`` since ``received``."""
    if not wait:
        return accepted(job_id)
    (body,) = await responses_of(gw, [job_id], LONG_WORK)
    return JSONResponse(with_total(body, elapsed_ms(received)))
