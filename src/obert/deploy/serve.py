"""``obert serve``: a ``Predictor`` behind HTTP (FastAPI on uvicorn), with dynamic batching.

- ``POST /predict`` ``{"inputs": ...}``: one input or a list (texts, pairs, QA or multiple-
  choice objects; see ``obert.deploy.predictor``); answers ``{"outputs": [...]}`` in order.
- ``GET /health``: the model, its kind and runtime, the queue; 503 while draining.
- ``GET /metrics``: Prometheus text (``obert.deploy.metrics``). OpenAPI at ``/docs``.

Batching: each request's inputs join one queue; a batch starts when it holds
``max_batch_size`` inputs or when its first input has waited ``max_wait_ms``; its inputs
(from any number of requests) are tokenized together, padded and run as one forward in a
worker thread (the kernels release the GIL, so the event loop keeps answering), and each
request gets its own answers back. An answer never depends on the rest of its batch.

Refusals, each a one-line ``{"error": ...}``: a body over ``max_body_bytes`` or more than
``max_inputs`` inputs in one request (413), malformed JSON or inputs the model cannot take,
such as a text over the model's positions when the server refuses rather than truncates
(422), a full queue (503 with ``Retry-After``), a failure in the model (500; the server goes
on). A client that disconnects while its inputs wait has them dropped from the queue.

Shutdown on SIGTERM: uvicorn stops accepting, the requests in flight are answered, the queue
is drained, and the process exits 0 (Ctrl-C drains the same way, then exits 130).
"""

import asyncio
import functools
import json
import logging
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from obert.deploy.metrics import CONTENT_TYPE, ServerMetrics
from obert.deploy.predictor import InputError, Predictor
from obert.errors import ObertError

logger = logging.getLogger("obert.serve")

PATHS = ("/predict", "/health", "/metrics", "/docs", "/openapi.json")
# A body over the limit is read and dropped up to this size (so the client reads its 413);
# past it the connection is closed.
DRAIN_LIMIT = 64 << 20


def require_serve():
    """fastapi and uvicorn, or one line that says how to get them."""
    try:
        import fastapi
        import uvicorn
    except ImportError:
        raise ObertError("obert serve needs fastapi and uvicorn: pip install 'obert[serve]'"
                         ) from None
    return fastapi, uvicorn


@dataclass
class ServeSettings:
    """The server's batching and limits (``obert serve``'s flags)."""

    max_batch_size: int = 32  # inputs per forward
    max_wait_ms: float = 5.0  # how long a batch's first input waits for company
    max_queue: int = 256  # inputs waiting; past it 503
    max_inputs: int = 64  # inputs per request; past it 413
    max_body_bytes: int = 1 << 20  # request body; past it 413
    retry_after_s: int = 1  # the Retry-After of a 503

    def check(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_inputs", "max_body_bytes",
                     "retry_after_s"):
            if getattr(self, name) < 1:
                raise ObertError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.max_wait_ms <= 60_000:
            raise ObertError("--max-wait-ms must be between 0 and 60000")
        if self.max_queue < self.max_inputs:
            raise ObertError(f"--max-queue {self.max_queue} is below --max-inputs "
                             f"{self.max_inputs}: a full request could never be queued")


def model_thread() -> ThreadPoolExecutor:
    """The one thread the model runs on. Load and compile the model on it too
    (``model_thread().submit(Predictor.load, ...)``): torch's OpenMP gives every thread that
    runs parallel work its own team of worker threads, and a second team (the main thread's,
    from compiling) beside the one that serves slows each forward down (measured 1.3-2.5x on
    2 cores)."""
    return ThreadPoolExecutor(1, thread_name_prefix="obert-model")


class QueueFull(Exception):
    pass


class _Job:
    """One request's inputs in the queue, and the future its handler awaits."""

    __slots__ = ("items", "results", "left", "future", "t0", "cancelled")

    def __init__(self, items: list, loop: asyncio.AbstractEventLoop) -> None:
        self.items, self.results, self.left = items, [None] * len(items), len(items)
        self.future: asyncio.Future = loop.create_future()
        self.t0 = time.monotonic()
        self.cancelled = False

    def put(self, i: int, answer) -> None:
        self.results[i] = answer
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(self.results)

    def fail(self, e: BaseException) -> None:
        if not self.future.done() and not self.cancelled:
            self.future.set_exception(e)


class Batcher:
    """The queue of inputs and the loop that runs them in batches on one worker thread."""

    def __init__(self, predictor: Predictor, settings: ServeSettings,
                 metrics: ServerMetrics, executor: ThreadPoolExecutor | None = None) -> None:
        self.predictor, self.settings, self.metrics = predictor, settings, metrics
        self._queue: deque[tuple[_Job, int]] = deque()
        self._executor = executor or model_thread()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.closing = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def start(self, warmup=None) -> None:
        """Start the loop (after one untimed batch of ``warmup`` items, if given)."""
        if warmup:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.predictor.predict_batch, warmup)
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    def submit(self, items: list) -> _Job:
        if self.closing:
            raise QueueFull("the server is shutting down")
        room = self.settings.max_queue - len(self._queue)
        if len(items) > room:
            raise QueueFull(f"the queue holds {len(self._queue)} of its {self.settings.max_queue} "
                            f"inputs and this request has {len(items)}: retry shortly")
        job = _Job(items, asyncio.get_running_loop())
        self._queue.extend((job, i) for i in range(len(items)))
        self.metrics.queue.set(len(self._queue))
        self._wake.set()
        return job

    def cancel(self, job: _Job) -> None:
        """Drop a job whose client has gone: its queued inputs never run."""
        job.cancelled = True
        if any(j is job for j, _ in self._queue):
            self._queue = deque(e for e in self._queue if e[0] is not job)
            self.metrics.queue.set(len(self._queue))

    async def close(self) -> None:
        """Run what is queued, then stop."""
        self.closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        s, loop = self.settings, asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self.closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._queue[0][0].t0 + s.max_wait_ms / 1e3
            while len(self._queue) < s.max_batch_size and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            if not self._queue:  # its clients left while it waited
                continue
            batch = [self._queue.popleft() for _ in range(min(s.max_batch_size,
                                                              len(self._queue)))]
            self.metrics.queue.set(len(self._queue))
            items = [job.items[i] for job, i in batch]
            t0 = time.perf_counter()
            try:
                res = await loop.run_in_executor(self._executor, self.predictor.predict_batch,
                                                 items, s.max_batch_size)
            except Exception as e:  # the model failed: these requests get a 500, others go on
                logger.error("batch of %d failed: %s: %s", len(items), type(e).__name__,
                             str(e).splitlines()[0][:200] if str(e) else "")
                for job, _ in batch:
                    job.fail(e)
                continue
            m = self.metrics
            m.batches.inc()
            m.inputs.inc(len(items))
            m.rows.inc(res.rows)
            m.padded.inc(res.padded_tokens)
            m.batch_size.observe(len(items))
            m.model_s.observe(res.forward_s)
            m.batch_s.observe(time.perf_counter() - t0)
            for (job, i), answer in zip(batch, res.outputs, strict=True):
                job.put(i, answer)


def _warmup_item(predictor: Predictor):
    mask = predictor.tokenizer.mask_token
    return {"classification": ("warm-up", None), "regression": ("warm-up", None),
            "qa": ("what?", "a warm-up context."),
            "multiple_choice": ("warm-up", ("a", "b")),
            "mlm": f"a {mask} warm-up."}[predictor.kind]


def _json(status: int, body: dict, headers: dict | None = None):
    from starlette.responses import Response

    return Response(json.dumps(body).encode(), status, headers=headers,
                    media_type="application/json")


def _validation_message(errors: list[dict]) -> str:
    """One line from FastAPI's validation errors."""
    if not errors:
        return "the request is not valid"
    e = errors[0]
    if e.get("type") == "json_invalid":
        why = (e.get("ctx") or {}).get("error", "")
        where = e["loc"][1] if len(e.get("loc", ())) > 1 else "?"
        return f"the body is not valid JSON ({why or e.get('msg')}, at character {where})"
    loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {e.get('msg', 'invalid')}{more}"


class _Guard:
    """ASGI middleware: every request counted by path and status, predict latency timed,
    bodies over the limit refused with 413 before any parsing, a client that leaves while
    sending its body dropped."""

    def __init__(self, app, settings: ServeSettings, metrics: ServerMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.monotonic()
        path = scope["path"] if scope["path"] in PATHS else "other"
        status = [0]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read(scope, receive)
                if body is None:  # gone mid-body, or too big (answered already)
                    if status[0] == 0:
                        self.metrics.errors.inc(reason="disconnected")
                        status[0] = 499
                    return
                if isinstance(body, int):
                    self.metrics.errors.inc(reason="payload_too_large")
                    limit = self.settings.max_body_bytes
                    await _json(413, {"error": f"the body has {body:,} bytes, over this "
                                      f"server's limit of {limit:,} (--max-body-bytes)"},
                                {"Connection": "close"})(scope, receive, send_status)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.inc(path=path, status=str(status[0] or 499))
            if path == "/predict":
                self.metrics.latency.observe(time.monotonic() - t0)

    async def _read(self, scope, receive) -> bytes | int | None:
        """The body; its size (an int) when over the limit (read and dropped up to
        DRAIN_LIMIT); None when the client left before sending it all."""
        limit = self.settings.max_body_bytes
        declared = next((int(v) for k, v in scope.get("headers", [])
                         if k == b"content-length" and v.isdigit()), None)
        chunks, size = [], 0
        over = declared is not None and declared > limit
        if over and declared > DRAIN_LIMIT:
            return declared
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            data = message.get("body", b"")
            size += len(data)
            if size > limit:
                over = True
            if not over:
                chunks.append(data)
            if not message.get("more_body", False):
                break
            if size > DRAIN_LIMIT:
                break
        return size if over else b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _client_gone(receive) -> None:
    """Returns when the client disconnects (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def create_app(predictor: Predictor, settings: ServeSettings | None = None, *,
               log: Callable[[str], None] | None = None, warmup: bool = True,
               executor: ThreadPoolExecutor | None = None):
    """The FastAPI app serving ``predictor``; the batcher runs for the app's lifespan
    (``with TestClient(app)`` or uvicorn), the model on ``executor`` (default: a new
    ``model_thread()``; pass the one that loaded the model)."""
    require_serve()
    from fastapi import Body, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.responses import Response

    models = _models()

    settings = settings or ServeSettings()
    settings.check()
    log = log or (lambda msg: print(f"obert serve: {msg}", file=sys.stderr, flush=True))
    metrics = ServerMetrics()
    batcher = Batcher(predictor, settings, metrics, executor)
    example = {"classification": ["a gripping, funny film", ["premise", "hypothesis"]],
               "regression": [["a man plays a guitar", "a person plays music"]],
               "qa": {"question": "Who wrote it?", "context": "It was written by Ann."},
               "multiple_choice": {"question": "Where do you keep milk?",
                                   "choices": ["fridge", "oven", "shelf"]},
               "mlm": f"Paris is the {predictor.tokenizer.mask_token} of France."}[predictor.kind]

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start([_warmup_item(predictor)] if warmup else None)
        log(f"ready: max batch {settings.max_batch_size}, max wait {settings.max_wait_ms:g} "
            f"ms, queue {settings.max_queue} inputs, {settings.max_inputs} inputs and "
            f"{settings.max_body_bytes:,} bytes per request")
        try:
            yield
        finally:
            log("draining")
            await batcher.close()
            log(f"stopped after {int(metrics.inputs.get())} inputs in "
                f"{int(metrics.batches.get())} batches")

    app = FastAPI(title="obert serve", version=_version(), lifespan=lifespan,
                  description=f"{predictor.describe()}")
    app.state.predictor, app.state.batcher = predictor, batcher
    app.state.metrics, app.state.settings = metrics, settings

    def refuse(status: int, reason: str, message: str, headers: dict | None = None):
        metrics.errors.inc(reason=reason)
        return _json(status, {"error": message}, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        return refuse(422, "invalid", _validation_message(list(exc.errors())))

    error = models["Error"]
    refusals = {413: {"model": error, "description": "body or inputs over the limits"},
                422: {"model": error, "description": "malformed JSON or inputs the model "
                      "cannot take"},
                503: {"model": error, "description": "queue full (see Retry-After) or "
                      "shutting down"}}
    described = Body(openapi_examples={predictor.kind: {
        "summary": f"{predictor._what()} (at most {settings.max_inputs} per request)",
        "value": {"inputs": example}}})

    predict_request = models["PredictRequest"]  # annotations below are evaluated here

    @app.post("/predict", response_model=models["PredictResponse"], responses=refusals)
    async def predict(request: Request, body: predict_request = described):
        """Answers for one input or a list, batched with other requests' inputs."""
        try:
            items = predictor.parse_inputs(body.inputs)
        except InputError as e:
            return refuse(422, "invalid", str(e))
        if len(items) > settings.max_inputs:
            return refuse(413, "too_many_inputs", f"{len(items)} inputs in one request, over "
                          f"this server's limit of {settings.max_inputs} (--max-inputs)")
        try:
            job = batcher.submit(items)
        except QueueFull as e:
            return refuse(503, "queue_full", str(e),
                          {"Retry-After": str(settings.retry_after_s)})
        metrics.in_flight.inc()
        watch = asyncio.ensure_future(_client_gone(request.receive))
        try:
            await asyncio.wait({job.future, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            metrics.in_flight.inc(-1)
        if not job.future.done():
            batcher.cancel(job)
            metrics.errors.inc(reason="disconnected")
            return Response(status_code=499)
        try:
            outputs = job.future.result()
        except Exception as e:
            return refuse(500, "internal", f"the model failed on this batch ({type(e).__name__}"
                          f"): {str(e).splitlines()[0][:200] if str(e) else 'no message'}")
        bad = next((o for o in outputs if isinstance(o, InputError)), None)
        if bad is not None:
            return refuse(422, "too_long" if "tokens long" in str(bad) else "invalid", str(bad))
        return _json(200, {"outputs": outputs})

    @app.get("/health")
    async def health():
        """The model, its kind, runtime and limits, and the queue."""
        body = {"status": "draining" if batcher.closing else "ok", "model": predictor.name,
                "architecture": type(predictor.model).__name__, "kind": predictor.kind,
                "runtime": predictor.runtime, "max_length": predictor.max_length,
                "truncate": predictor.truncate, "queue_depth": batcher.depth,
                "in_flight": int(metrics.in_flight.get()), "settings": asdict(settings),
                "engine": {k: v for k, v in predictor.engine.items()
                           if isinstance(v, int | float | str | bool | None)}}
        if predictor.kind == "classification":
            body["labels"] = predictor.labels
        return _json(503 if batcher.closing else 200, body)

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text: requests, errors, batch sizes, queue depth, latency."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(_Guard, settings=settings, metrics=metrics)
    return app


@functools.cache
def _models() -> dict:
    """The request and response bodies (pydantic models, for validation and /docs)."""
    from pydantic import BaseModel, ConfigDict, Field

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: Any = Field(description="one input or a list of them: texts, pairs "
                            "[text, text_pair] or {text, text_pair} for a classifier, "
                            "{question, context} for QA, {question, choices} for multiple "
                            "choice, texts with the mask token for fill-mask")

    class PredictResponse(BaseModel):
        outputs: list[Any] = Field(description="one answer per input, in order")

    class Error(BaseModel):
        error: str = Field(description="what is wrong, in one line")

    return {"PredictRequest": PredictRequest, "PredictResponse": PredictResponse,
            "Error": Error}


def _version() -> str:
    from obert import __version__

    return __version__


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: a free port), or one line saying why not;
    bound before the model loads, so a busy port fails at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise ObertError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    # proto TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a response written in two parts waits out the client's delayed ACK (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ObertError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port "
                         "(0 picks a free one)") from None
    sock.listen(2048)
    return sock


def serve(predictor: Predictor, settings: ServeSettings, sock: socket.socket | None = None,
          log_level: str = "info", access_log: bool = False,
          log: Callable[[str], None] | None = None,
          executor: ThreadPoolExecutor | None = None) -> None:
    """Serve on ``sock`` (default: ``listen()``) until SIGTERM or Ctrl-C, then drain and
    return; the model runs on ``executor`` (see ``model_thread``)."""
    _, uvicorn = require_serve()
    log = log or (lambda msg: print(f"obert serve: {msg}", file=sys.stderr, flush=True))
    settings.check()
    sock = sock or listen()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    def ready_log(msg: str) -> None:
        log(msg)
        if msg.startswith("ready"):
            log(f"listening on http://{shown}:{port} (docs at /docs)")

    app = create_app(predictor, settings, log=ready_log, executor=executor)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                            timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM by draining, then raises the signal again for the handler that
    # was there before it: a no-op one here, so a drained server exits 0.
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, before)
        sock.close()
