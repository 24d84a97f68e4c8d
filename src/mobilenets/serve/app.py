"""The Starlette application: ``POST /predict``, ``GET /healthz``, ``GET /metrics`` and the page.

``/predict`` takes an image as the body (``image/*`` or ``application/octet-stream``) or as the
file of a ``multipart/form-data`` form, and ``?top_k=N`` (classes, or boxes) and, for a detector,
``?min_score=S``. Decoding runs in a worker thread, inference in the batcher's thread: the event
loop only moves bytes. Every error is JSON ``{"error": code, "message": sentence, "status": N}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .batcher import Batcher
from .decode import DEFAULT_MAX_PIXELS
from .errors import ServeError
from .limits import DEFAULT_MAX_BODY_MB, limit_body
from .metrics import Metrics
from .servable import Servable
from .tasks import Item

ENDPOINTS = ("/predict", "/healthz", "/metrics", "/")
RAW_TYPES = ("application/octet-stream",)  # and image/*


@dataclass(frozen=True)
class Settings:
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 1e6)
    max_pixels: int = DEFAULT_MAX_PIXELS


def create_app(servable: Servable, settings: Settings = Settings()) -> Starlette:
    metrics = Metrics(ENDPOINTS, {"model": servable.name, "backend": servable.backend, "task": servable.task.name})
    batcher = Batcher(servable.run_batch, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue,
                      on_batch=metrics.observe_batch)
    metrics.queue_depth.set_function(lambda: batcher.waiting)
    page = resources.files(__package__).joinpath("static/index.html").read_bytes()
    info = {
        "model": servable.name,
        "task": servable.task.name,
        "backend": servable.backend,
        "runtime": servable.runtime,
        "int8": servable.int8,
        "classes": len(servable.task.class_names),
        "input_size": servable.task.input_size,
        "max_batch": settings.max_batch,
        "max_wait_ms": settings.max_wait_ms,
    }

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        top_k, min_score = _options(request)
        data = await _image_bytes(request)
        image, size = await run_in_threadpool(servable.prepare, data, settings.max_pixels)
        result, batch = await _unless_client_leaves(request, batcher.submit(Item(image, size, top_k, min_score)))
        metrics.queue_time.observe(batch.queue_s)
        return JSONResponse({
            "model": servable.name,
            "task": servable.task.name,
            **result,
            "model_ms": round(batch.model_s * 1000, 3),
            "batch_size": batch.size,
            "queue_ms": round(batch.queue_s * 1000, 3),
            "total_ms": round((time.perf_counter() - started) * 1000, 3),
        })

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", **info})

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    def error(e: ServeError) -> Response:
        metrics.errors.labels(e.code).inc()
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse(e.to_dict(), status_code=e.status, headers=headers)

    async def on_serve_error(request: Request, e: Exception) -> Response:
        return error(e)

    async def on_http_error(request: Request, e: Exception) -> Response:
        code = _slug(e.detail) if e.status_code != 400 else "bad_request"
        return error(ServeError(e.status_code, code, str(e.detail)))

    async def on_crash(request: Request, e: Exception) -> Response:  # Starlette re-raises it for uvicorn to log
        return error(ServeError(500, "internal_error", f"the server failed on this request ({type(e).__name__})"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start(warm_up=lambda: servable.warm_up(1))
        try:
            yield
        finally:
            await batcher.stop()

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
            Route("/", index, methods=["GET"]),
        ],
        middleware=[Middleware(metrics.middleware), Middleware(limit_body, max_bytes=settings.max_body_bytes)],
        exception_handlers={ServeError: on_serve_error, HTTPException: on_http_error, Exception: on_crash},
        lifespan=lifespan,
    )


async def _unless_client_leaves(request: Request, answer: Awaitable):
    """Await ``answer``, or cancel it if the client hangs up first: the batcher then skips the
    request (Starlette does not cancel a handler whose client has gone)."""
    answering = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answering, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not answering.done():
        answering.cancel()
        raise ServeError(499, "client_closed_request", "the client closed the connection before the answer")
    return answering.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":  # the body is read: nothing else can come
        pass


def _options(request: Request) -> tuple[int | None, float | None]:
    """``top_k`` (a whole number >= 1) and ``min_score`` (0 to 1), when given."""
    top_k, min_score = request.query_params.get("top_k"), request.query_params.get("min_score")
    if top_k is not None and not (top_k.isascii() and top_k.isdigit() and int(top_k) >= 1):
        raise ServeError(400, "bad_top_k", f"top_k must be a whole number of at least 1, got {top_k!r}")
    if min_score is not None:
        try:
            value = float(min_score)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise ServeError(400, "bad_min_score", f"min_score must be a number from 0 to 1, got {min_score!r}")
    return (int(top_k) if top_k else None), (float(min_score) if min_score is not None else None)


async def _image_bytes(request: Request) -> bytes:
    """The image sent: the body, or the one file of a multipart form."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        async with request.form(max_files=1, max_fields=16) as form:
            files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            if not files:
                raise ServeError(400, "no_file", "the multipart form has no file; send the image as a file field "
                                 "(e.g. curl -F image=@cat.jpg)")
            return await files[0].read()
    if media and media not in RAW_TYPES and not media.startswith("image/"):
        raise ServeError(415, "unsupported_media_type", f"Content-Type {media} is not an image: send the image "
                         "as image/* or application/octet-stream, or as a multipart/form-data file")
    return await request.body()


def _slug(text: str) -> str:
    return "_".join(str(text).lower().split())
