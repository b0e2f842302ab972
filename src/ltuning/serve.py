"""``ltuning serve``: an HTTP JSON server (FastAPI + uvicorn) over one loaded adapter, with dynamic batching.

Endpoints:

- ``POST /predict``: ``{"texts": [...] or "one text", "candidate_labels": [...]?, "multi_label": false?}``
  (a pair adapter takes each text as ``[premise, hypothesis]``) -> ``{"results": [r, ...]}``, one ``r``
  per text, in order, exactly what :func:`ltuning.prediction.predict` returns per text with
  ``return_scores=True`` (a list even for one string), and ``"warnings": [message, ...]`` with what
  ``predict`` warns about in Python for that request's group (candidate labels longer than an LT-prefix
  adapter's ``label_length``, scored on their first tokens; multi_label on a listwise adapter); the server's
  log gets them too.
- ``GET /health``: ``{"status": "ok", "requests", "texts", "batches"}`` (counters since start).
- ``GET /metadata``: method, base model, labels and label texts, limits, batching, versions.

Batching: each request's texts go into an asyncio queue; one worker takes a request, then gathers more
until ``max_batch`` texts are waiting or ``max_wait_ms`` has passed since the first, groups them by
(candidate label set, multi_label) and runs one :func:`predict` call per group in a worker thread (the
event loop keeps accepting requests meanwhile), then resolves each request's future with its slice.
The training labels' prefixes / prompts are the model's cached ones; a candidate label set's injection is
computed once and kept in a small LRU (:class:`InjectionCache`).

Limits: texts per request, characters per text (and per candidate label), candidate labels per request,
and the body size (413). Invalid bodies get 422 with ``{"error", "detail": [{"field", "message"}]}``;
unknown fields are refused, and no field names a file: a client cannot make the server read one.

fastapi and uvicorn are imported inside the functions here, so the rest of ltuning does not need them
(``pip install 'ltuning[serve]'``). No ``from __future__ import annotations`` here: FastAPI reads the
endpoint's annotations at run time, and the request model is a class local to :func:`create_app`.
"""


import asyncio
import collections
import concurrent.futures
import copy
import math
import platform
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ._version import __version__
from .config import is_utf8, shown_bytes
from .errors import ConfigError, LTuningError
from .methods import Injection
from .prediction import candidate_injection, check_texts, collected_warnings, predict

MAX_CANDIDATES = 64


@dataclass(frozen=True)
class Limits:
    """What one request may hold; over a limit -> 413 (body) or 422 (a field) with a message."""

    max_texts: int = 256
    max_chars: int = 10_000
    max_candidates: int = MAX_CANDIDATES
    max_body_bytes: int = 0  # 0: derived from the others (see body_limit)

    def body_limit(self) -> int:
        if self.max_body_bytes:
            return self.max_body_bytes
        # every text at its longest, 6 bytes per character worst case (\uXXXX), plus JSON syntax
        return max(64 * 1024, self.max_texts * (6 * self.max_chars + 16) + 6 * self.max_candidates * 256 + 4096)


def require_serve() -> None:
    """fastapi and uvicorn, or a clear error."""
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ltuning serve needs {' and '.join(missing)}: pip install 'ltuning[serve]'")


# ---------------------------------------------------------------------- the model side (no HTTP)
class _CandidateModel:
    """The model with a candidate label set in place of its training labels: what :func:`predict` sees when it
    scores the cached candidates' injection. Everything else is the model's (attribute access falls through).
    ``predict(view, texts)`` gives what ``predict(model, texts, candidate_labels=names)`` gives: both run
    :meth:`LTuningModel.score_texts` with :func:`candidate_injection`'s injection."""

    def __init__(self, model, names: tuple[str, ...], injection: Injection) -> None:
        self._model, self._injection = model, injection
        config = copy.copy(model.config)
        config.label_names = list(names)
        config.label_texts = list(names)
        self.config = config

    @property
    def label_names(self) -> list[str]:
        return self.config.label_names

    @property
    def num_labels(self) -> int:
        return len(self.config.label_names)

    def score_texts(self, texts, batch_size: int = 64, progress: bool = False, max_tokens: int | None = None,
                    injection: Injection | None = None) -> torch.Tensor:
        return self._model.score_texts(texts, batch_size, progress, max_tokens,
                                       injection=self._injection if injection is None else injection)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


class InjectionCache:
    """LRU of candidate label sets -> their injection (:func:`candidate_injection`) and the warnings building it
    gave (each request with that set gets them); thread-confined to the worker thread."""

    def __init__(self, model, size: int = 32) -> None:
        self.model, self.size = model, size
        self.entries: collections.OrderedDict[tuple[str, ...], tuple[Injection, list[str]]] = \
            collections.OrderedDict()
        self.hits = self.misses = 0

    def get(self, names: tuple[str, ...]) -> tuple[Injection, list[str]]:
        if names in self.entries:
            self.hits += 1
            self.entries.move_to_end(names)
            return self.entries[names]
        self.misses += 1
        with torch.inference_mode(), collected_warnings() as notes:
            inj = candidate_injection(self.model, list(names))
        self.entries[names] = inj, notes
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return inj, notes


@dataclass
class _Request:
    texts: list
    candidates: tuple[str, ...] | None
    multi_label: bool
    future: asyncio.Future


@dataclass
class Stats:
    requests: int = 0
    texts: int = 0
    batches: int = 0
    largest_batch: int = 0


def check_max_wait_ms(value: float) -> None:
    """--max-wait-ms: a finite number of milliseconds >= 0 (NaN would pass a plain ``< 0`` check and make a lone
    request wait for others)."""
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"--max-wait-ms must be a finite number >= 0, got {value}")


@dataclass
class Batcher:
    """Dynamic batching: an asyncio queue and one worker that runs the model in a thread."""

    model: Any
    max_batch: int = 64
    max_wait_ms: float = 5.0
    cache_size: int = 32
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be a positive integer, got {self.max_batch}")
        check_max_wait_ms(self.max_wait_ms)
        self.cache = InjectionCache(self.model, self.cache_size)
        self.pending: collections.deque[_Request] = collections.deque()
        self.arrived: asyncio.Event | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the worker (the app's lifespan does; so does the first request where no lifespan ran, as in
        an app mounted inside another). A stopped batcher starts again."""
        self.arrived = asyncio.Event()
        if self.executor is not None:  # a worker of a loop that is gone: its thread goes too
            self.executor.shutdown(wait=False)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ltuning-model")
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    async def submit(self, texts: list, candidates: tuple[str, ...] | None, multi_label: bool
                     ) -> tuple[list, list[str]]:
        """The request's results, one per text, and the warnings of its group's scoring."""
        if self.task is None or self.task.done() or self.task.get_loop() is not asyncio.get_running_loop():
            await self.start()  # first use without a lifespan, or a new event loop (the old worker is gone)
        future = asyncio.get_running_loop().create_future()
        self.pending.append(_Request(texts, candidates, multi_label, future))
        self.arrived.set()
        return await future

    async def _gather(self) -> list[_Request]:
        """One request, then more until max_batch texts are taken or max_wait_ms has passed since the first.

        The queue is a deque and an Event (everything runs on the event loop: nothing is lost when a wait
        times out, as a cancelled ``Queue.get`` can lose an item on older Pythons).
        """
        loop = asyncio.get_running_loop()
        while not self.pending:
            self.arrived.clear()
            await self.arrived.wait()
        batch = [self.pending.popleft()]
        count = len(batch[0].texts)
        deadline = loop.time() + self.max_wait_ms / 1000
        while count < self.max_batch:
            if self.pending:
                if count + len(self.pending[0].texts) > self.max_batch:
                    break  # the next batch's first request
                batch.append(self.pending.popleft())
                count += len(batch[-1].texts)
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            # one predict call per (candidate set, multi_label, pairs or single texts): a call takes one kind
            # of input, and a request is checked alone, so requests that differ must not share a call
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault((r.candidates, r.multi_label, isinstance(r.texts[0], tuple)), []).append(r)
            for (candidates, multi_label, _), requests in groups.items():
                texts = [t for r in requests for t in r.texts]
                try:
                    results, notes = await loop.run_in_executor(self.executor, self._run, texts, candidates,
                                                                multi_label)
                except Exception as e:  # noqa: BLE001 - handed to the requests, which answer 4xx / 500
                    for r in requests:
                        if not r.future.done():
                            r.future.set_exception(e)
                    continue
                start = 0
                for r in requests:
                    if not r.future.done():  # a client that went away cancelled its future
                        r.future.set_result((results[start:start + len(r.texts)], notes))
                    start += len(r.texts)
                self.stats.batches += 1
                self.stats.largest_batch = max(self.stats.largest_batch, len(texts))

    def _run(self, texts: list, candidates: tuple[str, ...] | None, multi_label: bool) -> tuple[list, list[str]]:
        """In the model thread: one :func:`predict` call for the group, ``max_batch`` texts per scoring pass;
        the results and the warnings for the group's requests."""
        model, notes = self.model, []
        if candidates is not None:
            injection, notes = self.cache.get(candidates)  # a cached set's warnings too
            model = _CandidateModel(self.model, candidates, injection)
        with collected_warnings() as more:
            # one request may hold more texts than max_batch (up to --max-texts): scored max_batch at a time
            results = predict(model, texts, batch_size=max(min(len(texts), self.max_batch), 1),
                              multi_label=multi_label, return_scores=True)
        notes = list(dict.fromkeys([*notes, *more]))
        for note in notes:  # the server's log, as before (the warnings filter shows each message once)
            warnings.warn(note, UserWarning, stacklevel=1)
        return results, notes


# ---------------------------------------------------------------------- checks of one request
def check_request(model, texts: list, candidates: list[str] | None, multi_label: bool, limits: Limits
                  ) -> list[tuple[str, str, int]]:
    """Problems of one request as (field, message, status), before it joins a batch (so one bad request
    never fails the others it would be batched with)."""
    problems = []
    if not texts:
        problems.append(("texts", "give at least one text", 422))
    if len(texts) > limits.max_texts:
        problems.append(("texts", f"{len(texts)} texts; at most {limits.max_texts} per request", 413))
    for i, t in enumerate(texts):
        parts = t if isinstance(t, tuple) else (t,)
        longest = max(len(p) for p in parts)
        if longest > limits.max_chars:
            problems.append((f"texts.{i}", f"{longest} characters; at most {limits.max_chars} per text", 413))
    if not problems:
        try:
            check_texts(texts, pairs=model.config.text_pairs)
        except LTuningError as e:
            problems.append(("texts", str(e), 422))
    if candidates is not None:
        problems += _check_candidates(model, candidates, multi_label, limits)
    if multi_label and not model.label_conditioned:
        problems.append(("multi_label", f"{model.config.method} has a softmax head over its training labels; "
                         "multi_label needs an lt-prefix or lt-prompt adapter", 422))
    return problems


def _check_candidates(model, candidates: list[str], multi_label: bool, limits: Limits) -> list[tuple[str, str, int]]:
    """Problems of a request's ``candidate_labels`` (see :func:`check_request`)."""
    if not model.label_conditioned:
        return [("candidate_labels", f"{model.config.method} has a fixed head over its training labels "
                 f"{model.label_names}; candidate labels need an lt-prefix or lt-prompt adapter", 422)]
    if len(candidates) > limits.max_candidates:
        return [("candidate_labels", f"{len(candidates)} labels; at most {limits.max_candidates}", 413)]
    problems = []
    if len(candidates) < (1 if multi_label else 2):
        problems.append(("candidate_labels", f"give at least {1 if multi_label else 2} labels", 422))
    if len(set(candidates)) != len(candidates):
        problems.append(("candidate_labels", "labels must be unique", 422))
    longest = min(limits.max_chars, 256)
    for i, c in enumerate(candidates):
        if not c.strip():
            problems.append((f"candidate_labels.{i}", "empty label", 422))
        elif not is_utf8(c):
            problems.append((f"candidate_labels.{i}", f"not UTF-8 text ({shown_bytes(c)})", 422))
        elif len(c) > longest:
            problems.append((f"candidate_labels.{i}", f"{len(c)} characters; at most {longest} per label", 413))
    return problems


def versions() -> dict[str, str]:
    import transformers

    out = {"ltuning": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    for name in ("fastapi", "uvicorn", "pydantic"):
        try:
            out[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return out


def metadata(model, limits: Limits, batcher: Batcher) -> dict:
    cfg = model.config
    return {
        "method": cfg.method,
        "base_model": cfg.base_model,
        "backbone": model.backbone.name,
        "backbone_kind": model.backbone.kind,
        "backbone_fingerprint": cfg.backbone_fingerprint,
        "labels": list(cfg.label_names),
        "label_texts": list(cfg.label_texts),
        "label_length": cfg.label_length,
        "text_max_length": model.text_max_length,
        "text_pairs": cfg.text_pairs,
        "open_vocabulary": bool(model.label_conditioned),
        "multi_label": bool(model.label_conditioned),
        "limits": {**asdict(limits), "max_body_bytes": limits.body_limit()},
        "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait_ms,
                     "candidate_cache": batcher.cache_size},
        "versions": versions(),
    }


# ---------------------------------------------------------------------- HTTP
class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before any of it is parsed, from
    Content-Length at once, or while a body sent in chunks (no Content-Length) streams in.

    The body is read here, up to the limit, and handed to the app whole: an app that reads the body itself
    turns an error raised while reading into its own answer (FastAPI: a 400), so the limit cannot be an
    exception thrown into the app's reading.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await self._refuse(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, as the server sends it

        return await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        import json

        body = json.dumps({"error": "request body too large",
                           "detail": [{"field": "body", "message": f"at most {self.limit} bytes"}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(model, limits: Limits | None = None, max_batch: int = 64, max_wait_ms: float = 5.0,
               cache_size: int = 32):
    """The FastAPI app serving ``model`` (an :class:`~ltuning.model.LTuningModel`), wrapped in the body limit.

    Returns: ``(asgi, app)``: the ASGI app to serve (``app`` inside the request-body limit) and the FastAPI
    app itself, whose ``app.state.batcher`` holds the batcher and its stats.
    """
    require_serve()
    from contextlib import asynccontextmanager
    from typing import Annotated

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    model.eval()
    batcher = Batcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms, cache_size=cache_size)
    with torch.inference_mode():
        model.score_texts(list(model.config.label_texts)[:1] if not model.config.text_pairs else
                          [(model.config.label_texts[0], model.config.label_texts[0])])  # warm: label encodings

    Pair = Annotated[list[StrictStr], Field(min_length=2, max_length=2)]
    Text = StrictStr | Pair

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: Text | list[Text] = Field(description="one text or a list (a pair adapter: [premise, hypothesis])")
        candidate_labels: list[StrictStr] | None = Field(default=None, description="open-vocabulary labels")
        multi_label: StrictBool = False

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="ltuning", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    def error(status: int, message: str, problems: list[tuple[str, str]], headers=None) -> JSONResponse:
        return JSONResponse(status_code=status, headers=headers, content={
            "error": message, "detail": [{"field": f, "message": m} for f, m in problems]})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # a path or method the server does not answer: the documented error shape, not FastAPI's {"detail"}
        where = f"{request.method} {request.url.path}"
        if exc.status_code not in (404, 405):
            return error(exc.status_code, str(exc.detail), [("body", str(exc.detail))],
                         headers=getattr(exc, "headers", None))
        return error(exc.status_code, f"{str(exc.detail).lower()}: {where}",
                     [("path", "this server answers POST /predict, GET /health and GET /metadata")],
                     headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json") and any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors()):
            # FastAPI reads a body as JSON only under this content type (curl -d sends a form's)
            return error(422, "invalid request: body", [("body", f"send the body as JSON with the header "
                         f"Content-Type: application/json (got {kind or 'none'}; curl: -H 'Content-Type: "
                         "application/json')")])
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # its loc is ("body", <byte offset>): the offset is no field
                problems.append(("body", f"{e.get('msg', 'invalid JSON')} at character {list(e.get('loc', ()))[-1]}"))
                continue
            raw = list(e.get("loc", ()))[1:] if tuple(e.get("loc", ()))[:1] == ("body",) else list(e.get("loc", ()))
            # A union's member names (str, list[str], ...) are not fields: keep field names and indices, and
            # the name of an unknown field.
            loc = [str(p) for i, p in enumerate(raw) if isinstance(p, int) or p in PredictRequest.model_fields
                   or (e.get("type") == "extra_forbidden" and i == len(raw) - 1)]
            problems.append((".".join(loc) or "body", e.get("msg", "invalid")))
        unique = list(dict.fromkeys(problems))
        return error(422, "invalid request: " + ", ".join(dict.fromkeys(f for f, _ in unique)), unique)

    @app.get("/health")
    async def health():
        return {"status": "ok", **asdict(batcher.stats)}

    info = metadata(model, limits, batcher)

    @app.get("/metadata")
    async def get_metadata():
        return info

    @app.post("/predict")
    async def predict_endpoint(body: PredictRequest):
        raw = [body.texts] if isinstance(body.texts, str) or _is_pair(body.texts, model) else body.texts
        texts = [tuple(t) if isinstance(t, list) else t for t in raw]
        candidates = body.candidate_labels  # as given: the names answered are the names asked for
        problems = check_request(model, texts, candidates, body.multi_label, limits)
        if problems:
            status = 413 if any(s == 413 for _, _, s in problems) else 422
            fields = ", ".join(dict.fromkeys(f for f, _, _ in problems))
            return error(status, f"{'too large' if status == 413 else 'invalid request'}: {fields}",
                         [(f, m) for f, m, _ in problems])
        batcher.stats.requests += 1
        batcher.stats.texts += len(texts)
        try:
            results, notes = await batcher.submit(texts, None if candidates is None else tuple(candidates),
                                                  body.multi_label)
        except LTuningError as e:
            field_name = "candidate_labels" if candidates is not None else "texts"
            return error(422, f"invalid request: {field_name}", [(field_name, str(e))])
        return {"results": results, **({"warnings": notes} if notes else {})}

    return BodyLimit(app, limits.body_limit()), app


def _is_pair(texts, model) -> bool:
    """``["premise", "hypothesis"]`` for a pair adapter is one input, as a tuple is for :func:`predict`."""
    return bool(model.config.text_pairs) and isinstance(texts, list) and len(texts) == 2 \
        and all(isinstance(t, str) for t in texts)


def serve(model, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None, max_batch: int = 64,
          max_wait_ms: float = 5.0, log_level: str = "info") -> None:
    """Serve ``model`` over HTTP until interrupted."""
    require_serve()
    import uvicorn

    asgi, _ = create_app(model, limits, max_batch, max_wait_ms)
    uvicorn.run(asgi, host=host, port=port, log_level=log_level)
