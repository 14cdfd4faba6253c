"""An OpenAI-compatible HTTP API over one in-process SpeechGPT pipeline (FastAPI).

Any OpenAI client talks to a SpeechGPT bundle through these routes, so existing tools work unchanged:

- ``POST /v1/chat/completions``: OpenAI's chat-completions schema. Message content is a string or a list of parts
  (``{"type": "text", "text": ...}``, ``{"type": "input_audio", "input_audio": {"data": <base64>, "format":
  "wav"}}``; any format libsndfile reads is accepted, mp3 included). ``modalities: ["text", "audio"]`` asks for a
  spoken answer, returned as ``choices[0].message.audio = {"id", "data": <base64 WAV>, "expires_at", "transcript"}``
  next to the text in ``message.content``. ``temperature``, ``top_p``, ``max_tokens`` /
  ``max_completion_tokens`` and ``seed`` map onto the pipeline's generation options.
- ``GET /v1/models``, ``GET /v1/models/{id}``: the one model this server runs.
- ``POST /v1/audio/transcriptions``: a multipart ``file`` (+ ``model``) → ``{"text": ...}``, through the
  cross-modal speech→text instruction (the first packaged speech→text template).
- ``POST /v1/audio/speech``: ``{"model", "input", "voice", "response_format": "wav" | "pcm"}`` → audio bytes,
  through the cross-modal text→speech instruction. ``voice`` is accepted and ignored: the vocoder has one voice.
- ``GET /health``: liveness and queue depth; the only route that needs no API key.

Streaming (``"stream": true``) sends server-sent events of ``chat.completion.chunk`` objects: the first carries
``delta.role``; text arrives in ``delta.content``; audio arrives while the answer is still being generated, in
``delta.audio = {"id", "data"}`` where ``data`` is base64 of raw little-endian 16-bit mono PCM at 16 kHz (no WAV
header, whatever ``audio.format`` says: pieces of a WAV cannot be played on their own, and this is what OpenAI's
own ``pcm16`` streaming sends); one more ``delta.audio`` carries the ``transcript`` and ``expires_at``; the last
chunk has ``finish_reason``; with ``stream_options: {"include_usage": true}`` a final chunk with empty ``choices``
holds ``usage``; then ``data: [DONE]``. An error after the stream has started arrives as ``data: {"error": ...}``.

Generations run in a worker pool (by default one at a time: a model is not re-entrant, and one request at a time is
what a CPU can serve) behind a bounded queue: a request that finds the queue full gets 429 with ``Retry-After``,
one that does not finish in time gets 504, a body over the size limit gets 413. Every error has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; a mistake of the client is always a 4xx, never a 500.

System and developer messages are accepted and skipped: SpeechGPT's meta instruction is fixed by its training.
User text goes to the pipeline as it was typed; the pipeline turns typed control strings (``<sosp>``, ``<12>``,
``[SpeechGPT]``) into plain text, so a message can never forge a turn or a speech span.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import io
import json
import logging
import math
import socket
import threading
import time
import uuid
import wave
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from speechgpt.audio import AudioError, load_audio
from speechgpt.constants import SAMPLE_RATE
from speechgpt.infer import AudioChunk, Done, Event, GenerationOptions, Reply, TextDelta
from speechgpt.prompt_format import cross_modal_question

logger = logging.getLogger(__name__)

__all__ = [
    "OPEN_PATHS",
    "APIError",
    "BackgroundServer",
    "ChatPipeline",
    "ServerLimits",
    "create_app",
]

OPEN_PATHS = frozenset({"/health"})
"""Routes that answer without an API key (load balancers and probes poll them)."""
AUDIO_TTL_S = 3600
"""How long a spoken answer's id stays valid for multi-turn use (``expires_at``), as OpenAI does."""
MAX_STORED_AUDIO_IDS = 1024
"""Spoken answers remembered for multi-turn use; the oldest are forgotten first."""
MAX_SPEECH_INPUT_CHARS = 4096
"""Longest ``input`` of ``/v1/audio/speech`` (OpenAI's limit)."""
SPEECH_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm"}
"""``response_format`` values of ``/v1/audio/speech`` and their media types (``pcm``: raw 16-bit LE at 16 kHz)."""
TRANSCRIPTION_FORMATS = ("json", "text")
UNSUPPORTED_CHAT_PARAMETERS = {
    "tools": "SpeechGPT has no tool calling",
    "tool_choice": "SpeechGPT has no tool calling",
    "functions": "SpeechGPT has no function calling",
    "function_call": "SpeechGPT has no function calling",
    "stop": "stop sequences are not supported; generation ends at the model's own end of answer",
    "logprobs": "log probabilities are not returned",
    "top_logprobs": "log probabilities are not returned",
    "response_format": "structured output is not supported",
}
"""Chat parameters that would change what the answer is, refused (when set) rather than silently ignored."""
_SAFE_RETRY_AFTER_S = 1
_T = TypeVar("_T")


class ChatPipeline(Protocol):
    """What the server needs from a pipeline (``speechgpt.infer.SpeechGPT`` or a test double)."""

    def chat(self, messages: list[dict[str, Any]], options: GenerationOptions | None = None) -> Reply: ...

    def chat_stream(
        self, messages: list[dict[str, Any]], options: GenerationOptions | None = None
    ) -> Iterator[Event]: ...


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts and how much work it takes on, so a burst of clients cannot exhaust it.

    Attributes:
        max_body_bytes: Largest request body (base64 audio included); larger ones get 413.
        max_audio_seconds: Longest input recording; longer ones get 400.
        request_timeout_s: Wall-clock budget of one request, queueing included; then 504.
        max_queue: Requests allowed to wait for a worker; more get 429 with ``Retry-After``.
        max_concurrent: Generations run at the same time (worker threads sharing one model).
        max_tokens: Most new tokens one request may ask for; also the default when it asks for none.
    """

    max_body_bytes: int = 25 * 2**20
    max_audio_seconds: float = 120.0
    request_timeout_s: float = 120.0
    max_queue: int = 8
    max_concurrent: int = 1
    max_tokens: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_concurrent", "max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServerLimits.{name} must be a positive int, got {value!r}")
        if not isinstance(self.max_queue, int) or isinstance(self.max_queue, bool) or self.max_queue < 0:
            raise ValueError(f"ServerLimits.max_queue must be an int >= 0, got {self.max_queue!r}")
        for name in ("max_audio_seconds", "request_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ServerLimits.{name} must be a positive number of seconds, got {value!r}")


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"message": message, "type": type, "param": param, "code": code}
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body}, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------------------------------------------------
# Request schemas (only the fields we act on; OpenAI clients send more, which is ignored)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _AudioRef(_Schema):
    id: str


class _Message(_Schema):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None  # a string or a list of parts, checked by hand for clearer messages
    audio: _AudioRef | None = None


class _AudioOutput(_Schema):
    voice: Any = None  # one voice only: accepted and ignored
    format: Literal["wav", "pcm16"] = "wav"


class _StreamOptions(_Schema):
    include_usage: bool = False


class _ChatRequest(_Schema):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] | None = Field(default=None, min_length=1)
    audio: _AudioOutput | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)


class _SpeechRequest(_Schema):
    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=MAX_SPEECH_INPUT_CHARS)
    voice: Any = None
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)


_M = TypeVar("_M", bound=BaseModel)


def _loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "request body"


def _validation_error(error: ValidationError) -> APIError:
    first = error.errors(include_url=False)[0]
    where = _loc(tuple(first["loc"]))
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return APIError(400, f"{where}: {first['msg']}{more}", param=where, code="invalid_value")


async def _json_body(request: Request, schema: type[_M]) -> _M:
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(
            400, f"request body must be a JSON object, got a JSON {type(data).__name__}", code="invalid_json"
        )
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from None


# ---------------------------------------------------------------------------------------------------------------
# Admission, queueing and timeouts


class _Ticket:
    """One admitted request's place: given to a worker by :meth:`submit`, or handed back when the block ends."""

    def __init__(self, scheduler: _Scheduler) -> None:
        self._scheduler = scheduler
        self._submitted = False

    def submit(self, fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        self._submitted = True
        return self._scheduler._submit(fn)

    def __enter__(self) -> _Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._submitted:
            self._scheduler._release()


class _Scheduler:
    """Bounded admission in front of a small worker pool.

    A place is held from admission until the work really ends: a request that timed out still holds its place
    while its generation runs on (a running generation cannot be interrupted), so the number of requests in the
    building never exceeds ``max_concurrent + max_queue``.
    """

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._executor = concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix="speechgpt-generate")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._mean_s: float | None = None

    def admit(self) -> _Ticket:
        with self._lock:
            if self._admitted >= self.max_concurrent + self.max_queue:
                retry = self._retry_after_locked()
                raise APIError(
                    429,
                    f"the server is busy ({self._running} running, {self._admitted - self._running} waiting, "
                    f"queue limit {self.max_queue}); retry in {retry} s",
                    type="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": str(retry)},
                )
            self._admitted += 1
        return _Ticket(self)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self._running,
                "waiting": self._admitted - self._running,
                "max_concurrent": self.max_concurrent,
                "max_queue": self.max_queue,
            }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _retry_after_locked(self) -> int:
        # About when the next place frees up (a worker finishes), from the running mean of recent generations.
        # Not when the whole queue has drained: clients told to wait that long would leave the model idle.
        if self._mean_s is None:
            return _SAFE_RETRY_AFTER_S
        return max(_SAFE_RETRY_AFTER_S, math.ceil(self._mean_s / self.max_concurrent))

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _submit(self, fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        def job() -> _T:
            with self._lock:
                self._running += 1
            start = time.perf_counter()
            try:
                return fn()
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    self._running -= 1
                    self._mean_s = elapsed if self._mean_s is None else 0.8 * self._mean_s + 0.2 * elapsed

        try:
            future = self._executor.submit(job)
        except RuntimeError:  # shut down
            self._release()
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down") from None
        future.add_done_callback(lambda _: self._release())  # also runs when a queued job is cancelled
        return future


def _timeout_error(limits: ServerLimits) -> APIError:
    return APIError(
        504,
        f"the request did not finish within the server's timeout of {limits.request_timeout_s:g} s",
        type="timeout_error",
        code="timeout",
    )


def _pipeline_error(error: BaseException) -> APIError:
    """A pipeline failure as an API error: bad input (ValueError, AudioError) is the client's, the rest ours."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ValueError):
        return APIError(400, str(error), code="invalid_input")
    logger.error("generation failed", exc_info=error)
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _EventBridge:
    """Carries a pipeline's streamed events from the worker thread to the event loop, and a stop request back."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = threading.Event()

    def pump(self, open_stream: Callable[[], Iterator[Any]]) -> None:
        """Runs in the worker: forwards events until the stream ends, fails, or the client has gone."""
        try:
            events = open_stream()
            try:
                for event in events:
                    if self.stop.is_set():
                        break
                    self._put(event)
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()  # stops generation when the client left early
        except BaseException as e:
            self._put(_Failure(e))
        else:
            self._put(_END)

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.stop.set()

    async def next(self, deadline: float, limits: ServerLimits) -> Any:
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.stop.set()
                raise _timeout_error(limits) from None
        if isinstance(item, _Failure):
            raise _pipeline_error(item.error)
        return item


# ---------------------------------------------------------------------------------------------------------------
# Audio in and out


def _pcm16(samples: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM, scaled like ``speechgpt.audio.write_wav`` (x·2¹⁵, rounded, clipped)."""
    scaled = np.round(np.asarray(samples, dtype=np.float64) * 2.0**15)
    return np.clip(scaled, -(2**15), 2**15 - 1).astype("<i2").tobytes()


def _wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file in memory (what clients play directly)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(_pcm16(samples))
    return buffer.getvalue()


def _as_wave(samples: Any, sample_rate: int) -> np.ndarray:
    """Pipeline audio as float32 at :data:`SAMPLE_RATE` (the rate every response promises)."""
    return load_audio(np.asarray(samples), sample_rate=int(sample_rate), max_seconds=None, name="generated audio")


def _reply_wave(reply: Reply) -> np.ndarray | None:
    """The reply's speech at :data:`SAMPLE_RATE` (None when the model said nothing aloud)."""
    if reply.waveform is None or np.asarray(reply.waveform).size == 0:
        return None
    return _as_wave(reply.waveform, reply.sample_rate)


class _AudioStore:
    """Spoken answers by id, so a client can refer back to one (``{"role": "assistant", "audio": {"id": ...}}``).

    The reply is kept without its waveform: its transcript, text and units are what goes back into the prompt.
    """

    def __init__(self, ttl_s: int = AUDIO_TTL_S, max_items: int = MAX_STORED_AUDIO_IDS) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[int, Reply | None]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, reply: Reply | None, audio_id: str | None = None) -> tuple[str, int]:
        """Remember ``reply`` under a new id (or under ``audio_id``); return the id and its expiry (Unix seconds).

        A streamed answer reserves its id with ``None`` when its first audio goes out, and fills it in at the end.
        """
        audio_id = audio_id or f"audio_{uuid.uuid4().hex}"
        expires_at = int(time.time()) + self.ttl_s
        with self._lock:
            self._items[audio_id] = (expires_at, None if reply is None else replace(reply, waveform=None))
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return audio_id, expires_at

    def get(self, audio_id: str) -> Reply | None:
        with self._lock:
            item = self._items.get(audio_id)
            if item is None:
                return None
            if item[0] < time.time() or item[1] is None:
                del self._items[audio_id]
                return None
            return item[1]


# ---------------------------------------------------------------------------------------------------------------
# Body size and API key, before any route runs


class _GuardMiddleware:
    """Checks the API key and the body size, then hands the (buffered) request to the app.

    Buffering the body here means an oversized upload is refused with 413 before any handler or parser sees it,
    whatever the client declared in ``Content-Length``.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        denied = self._check_key(scope["path"], headers.get("authorization"))
        if denied is not None:
            await denied.response()(scope, receive, send)
            return
        too_large = APIError(
            413,
            f"request body is larger than the server's limit of {self.max_body_bytes} bytes",
            code="request_too_large",
        )
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body_bytes:
            await too_large.response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away while sending
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await too_large.response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for http.disconnect, as streaming responses expect

        await self.app(scope, replay, send)

    def _check_key(self, path: str, authorization: str | None) -> APIError | None:
        if self.api_key is None or path in OPEN_PATHS:
            return None
        if not authorization:
            return APIError(
                401,
                "missing API key: send it as 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            return APIError(401, "incorrect API key provided", code="invalid_api_key")
        return None


# ---------------------------------------------------------------------------------------------------------------
# The routes


class _Server:
    """The state every route shares (pipeline, limits, queue, remembered audio); routes are its methods."""

    def __init__(self, pipeline: ChatPipeline, *, model_name: str, limits: ServerLimits) -> None:
        from speechgpt.data.templates import Direction, load_templates

        self.pipeline = pipeline
        self.model_name = model_name
        self.limits = limits
        self.scheduler = _Scheduler(limits.max_concurrent, limits.max_queue)
        self.audio_store = _AudioStore()
        self.created = int(time.time())
        self.transcribe_instruction = load_templates(Direction.SPEECH_TO_TEXT)[0]
        self.speak_instruction = load_templates(Direction.TEXT_TO_SPEECH)[0]

    # -- shared steps ------------------------------------------------------------------------------------------

    def _check_model(self, model: str, param: str = "model") -> None:
        if model != self.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server runs {self.model_name!r}",
                param=param,
                code="model_not_found",
            )

    def _options(
        self,
        *,
        output_modality: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> GenerationOptions:
        if max_tokens is not None and max_tokens > self.limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens: {max_tokens} is more than this server allows ({self.limits.max_tokens})",
                param="max_tokens",
                code="invalid_value",
            )
        given = {"temperature": temperature, "top_p": top_p, "seed": seed}
        fields = {name: value for name, value in given.items() if value is not None}
        try:
            return GenerationOptions(
                max_new_tokens=max_tokens or self.limits.max_tokens, output_modality=output_modality, **fields
            )
        except ValueError as e:
            raise APIError(400, str(e), code="invalid_value") from None

    def _load_audio(self, data: bytes, name: str) -> np.ndarray:
        try:
            return load_audio(data, max_seconds=self.limits.max_audio_seconds, name=name)
        except AudioError as e:
            raise APIError(400, str(e), param=name, code="invalid_audio") from None

    def _input_audio(self, part: dict[str, Any], where: str) -> np.ndarray:
        spec = part.get("input_audio")
        if not isinstance(spec, dict):
            raise APIError(400, f"{where}.input_audio: expected an object with 'data' and 'format'", param=where)
        data = spec.get("data")
        if not isinstance(data, str) or not data.strip():
            raise APIError(400, f"{where}.input_audio.data: expected base64-encoded audio", param=where)
        if not isinstance(spec.get("format", "wav"), str):
            raise APIError(400, f"{where}.input_audio.format: expected a string such as 'wav'", param=where)
        if data.startswith("data:"):  # a data URL: data:audio/wav;base64,....
            data = data.partition(",")[2]
        try:
            raw = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise APIError(400, f"{where}.input_audio.data: not valid base64 ({e})", param=where) from None
        if not raw:
            raise APIError(400, f"{where}.input_audio.data: empty audio (0 bytes)", param=where)
        return self._load_audio(raw, f"{where}.input_audio")

    def _user_content(self, content: Any, where: str) -> Any:
        """A user message for the pipeline: text, one audio part, or text parts plus one audio part."""
        if isinstance(content, str):
            return content
        if not isinstance(content, list) or not content:
            raise APIError(400, f"{where}.content: expected a string or a non-empty list of content parts", param=where)
        texts: list[str] = []
        audio: np.ndarray | None = None
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise APIError(400, f"{at}.text: expected a string", param=at)
                texts.append(part["text"])
            elif kind == "input_audio":
                if audio is not None:
                    raise APIError(400, f"{at}: only one input_audio part per message is supported", param=at)
                audio = self._input_audio(part, at)
            else:
                raise APIError(
                    400, f"{at}: unsupported content part type {kind!r}; use 'text' or 'input_audio'", param=at
                )
        text = "\n".join(texts)
        if audio is None:
            return text
        audio_part = {"type": "audio", "audio": audio}
        return [{"type": "text", "text": text}, audio_part] if text.strip() else audio_part

    def _assistant_content(self, message: _Message, where: str) -> str | Reply:
        content = message.content
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") in ("text", "refusal") for p in content):
                raise APIError(400, f"{where}.content: an assistant message holds only text parts", param=where)
            content = "\n".join(str(p.get("text") or p.get("refusal") or "") for p in content)
        if isinstance(content, str) and content:
            return content
        if content is not None and not isinstance(content, str):
            raise APIError(400, f"{where}.content: expected a string or a list of text parts", param=where)
        if message.audio is not None:
            remembered = self.audio_store.get(message.audio.id)
            if remembered is None:
                raise APIError(
                    400,
                    f"{where}.audio.id: unknown or expired audio id {message.audio.id!r}; send the answer's "
                    "transcript as content instead",
                    param=f"{where}.audio.id",
                )
            return remembered
        raise APIError(400, f"{where}: an assistant message needs content (or the audio id of a reply)", param=where)

    def _pipeline_messages(self, messages: list[_Message]) -> list[dict[str, Any]]:
        """Client messages as pipeline messages; runs in a thread because it decodes audio."""
        turns: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if message.role in ("system", "developer"):
                continue  # the meta instruction is fixed by training
            if message.role == "assistant":
                turns.append({"role": "assistant", "content": self._assistant_content(message, where)})
            else:
                turns.append({"role": "user", "content": self._user_content(message.content, where)})
        if not turns or turns[-1]["role"] != "user":
            raise APIError(400, "messages: the last message must come from the user", param="messages")
        return turns

    async def _run(self, ticket: _Ticket, fn: Callable[[], _T], deadline: float) -> _T:
        def guarded() -> _T:
            try:
                return fn()
            except BaseException as e:
                raise _pipeline_error(e) from e

        future = ticket.submit(guarded)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            logger.warning("request timed out after %.1f s", self.limits.request_timeout_s)
            raise _timeout_error(self.limits) from None

    @staticmethod
    def _usage(reply: Reply) -> dict[str, int]:
        prompt, completion = int(reply.prompt_tokens), int(reply.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- routes ------------------------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.model_name, **self.scheduler.stats()}

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "speechgpt"}

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_card()]}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id, param="model_id")
        return self._model_card()

    async def chat_completions(self, request: Request) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout_s
        body = await _json_body(request, _ChatRequest)
        self._check_model(body.model)
        for name, value in (body.model_extra or {}).items():
            if name in UNSUPPORTED_CHAT_PARAMETERS and value not in (None, False, [], {"type": "text"}):
                reason = UNSUPPORTED_CHAT_PARAMETERS[name]
                raise APIError(400, f"{name}: not supported ({reason})", param=name, code="unsupported_parameter")
        modalities = body.modalities or ["text"]
        want_audio = "audio" in modalities
        output = body.audio or _AudioOutput()
        options = self._options(
            output_modality="speech" if want_audio else "text",
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
        )
        with self.scheduler.admit() as ticket:
            messages = await run_in_threadpool(self._pipeline_messages, body.messages)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return await self._stream(ticket, messages, options, deadline, want_audio, include_usage)
            reply = await self._run(ticket, lambda: self.pipeline.chat(messages, options), deadline)
        return JSONResponse(self._completion(reply, want_audio, output.format))

    def _completion(self, reply: Reply, want_audio: bool, audio_format: str) -> dict[str, Any]:
        text = reply.text
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "audio": None}
        samples = _reply_wave(reply) if want_audio else None
        if samples is not None:
            audio_id, expires_at = self.audio_store.put(reply)
            data = _wav_bytes(samples, SAMPLE_RATE) if audio_format == "wav" else _pcm16(samples)
            message["audio"] = {
                "id": audio_id,
                "data": base64.b64encode(data).decode("ascii"),
                "expires_at": expires_at,
                "transcript": text,
            }
        elif want_audio:
            logger.warning("audio was requested but the model produced no speech; answering with text only")
        usage = self._usage(reply)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
            "usage": usage,
        }

    async def _stream(
        self,
        ticket: _Ticket,
        messages: list[dict[str, Any]],
        options: GenerationOptions,
        deadline: float,
        want_audio: bool,
        include_usage: bool,
    ) -> StreamingResponse:
        bridge = _EventBridge(asyncio.get_running_loop())
        ticket.submit(lambda: bridge.pump(lambda: self.pipeline.chat_stream(messages, options)))
        # Wait for the first event so that a failure before any output is still a proper HTTP status.
        first = await bridge.next(deadline, self.limits)
        events = self._sse(bridge, first, deadline, want_audio, include_usage)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def _sse(
        self,
        bridge: _EventBridge,
        event: Any,
        deadline: float,
        want_audio: bool,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        audio_id: str | None = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse_data(self._chunk(completion_id, created, [choice]))

        def audio_delta(samples: np.ndarray) -> str:
            return chunk({"audio": {"id": audio_id, "data": base64.b64encode(_pcm16(samples)).decode("ascii")}})

        sent_text, sent_audio = "", False
        try:
            yield chunk({"role": "assistant", "content": ""})
            while event is not _END:
                if isinstance(event, TextDelta) and event.text:
                    sent_text += event.text
                    yield chunk({"content": event.text})
                elif isinstance(event, AudioChunk) and want_audio:
                    samples = _as_wave(event.samples, event.sample_rate)
                    if samples.size:
                        audio_id = audio_id or self.audio_store.put(None)[0]
                        sent_audio = True
                        yield audio_delta(samples)
                elif isinstance(event, Done):
                    reply = event.reply
                    text = reply.text
                    if text.startswith(sent_text) and len(text) > len(sent_text):  # the stream fell short
                        yield chunk({"content": text[len(sent_text) :]})
                    samples = _reply_wave(reply) if want_audio else None
                    if samples is not None:
                        audio_id, expires_at = self.audio_store.put(reply, audio_id)
                        if not sent_audio:
                            yield audio_delta(samples)
                        yield chunk({"audio": {"id": audio_id, "transcript": text, "expires_at": expires_at}})
                    usage = self._usage(reply)
                    yield chunk({}, finish_reason=reply.finish_reason)
                    if include_usage:
                        yield _sse_data({**self._chunk(completion_id, created, []), "usage": usage})
                event = await bridge.next(deadline, self.limits)
            yield "data: [DONE]\n\n"
        except Exception as e:  # the status line has gone out: report in the stream, as OpenAI does
            yield _sse_data({"error": _pipeline_error(e).body})
        finally:
            bridge.stop.set()  # the client may have gone: stop generating

    def _chunk(self, completion_id: str, created: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": self.model_name,
            "choices": choices,
        }

    async def transcriptions(self, request: Request) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout_s
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(
                400, "send multipart/form-data with a 'file' field (the audio) and a 'model' field", param="file"
            )
        form = await request.form(max_files=1, max_fields=32, max_part_size=self.limits.max_body_bytes)
        try:
            model = form.get("model")
            if not isinstance(model, str) or not model:
                raise APIError(400, "model: required form field", param="model")
            self._check_model(model)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise APIError(
                    400, "file: send the audio as a multipart/form-data file field named 'file'", param="file"
                )
            response_format = form.get("response_format") or "json"
            if response_format not in TRANSCRIPTION_FORMATS:
                raise APIError(
                    400,
                    f"response_format: {response_format!r} is not supported; use one of {list(TRANSCRIPTION_FORMATS)}",
                    param="response_format",
                )
            temperature = _form_float(form.get("temperature"), "temperature", 0.0, 2.0)
            data = await upload.read()
            name = f"file {upload.filename!r}" if upload.filename else "file"
        finally:
            await form.close()
        if not data:
            raise APIError(400, f"{name}: empty upload (0 bytes)", param="file", code="invalid_audio")
        options = self._options(output_modality="text", temperature=temperature)
        with self.scheduler.admit() as ticket:
            samples = await run_in_threadpool(self._load_audio, data, name)
            audio_part = {"type": "audio", "audio": samples}
            messages = [
                {"role": "user", "content": [{"type": "text", "text": self.transcribe_instruction}, audio_part]}
            ]
            reply = await self._run(ticket, lambda: self.pipeline.chat(messages, options), deadline)
        text = reply.transcript or reply.text
        if response_format == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text})

    async def speech(self, request: Request) -> Response:
        deadline = time.monotonic() + self.limits.request_timeout_s
        body = await _json_body(request, _SpeechRequest)
        self._check_model(body.model)
        if not body.input.strip():
            raise APIError(400, "input: nothing to say (the text is blank)", param="input")
        if body.speed != 1.0:
            raise APIError(400, f"speed: only 1.0 is supported, got {body.speed:g}", param="speed")
        options = self._options(output_modality="speech")
        messages = [{"role": "user", "content": cross_modal_question(self.speak_instruction, body.input)}]
        with self.scheduler.admit() as ticket:
            reply = await self._run(ticket, lambda: self.pipeline.chat(messages, options), deadline)
        samples = _reply_wave(reply)
        if samples is None:
            raise APIError(500, "the model produced no speech for this input", type="server_error", code="no_speech")
        data = _wav_bytes(samples, SAMPLE_RATE) if body.response_format == "wav" else _pcm16(samples)
        return Response(data, media_type=SPEECH_FORMATS[body.response_format])


def _sse_data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _form_float(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise APIError(400, f"{name}: expected a number, got {value!r}", param=name) from None
    if not low <= number <= high:
        raise APIError(400, f"{name}: must be between {low:g} and {high:g}, got {number:g}", param=name)
    return number


# ---------------------------------------------------------------------------------------------------------------
# The app


def create_app(
    pipeline: ChatPipeline,
    *,
    model_name: str,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
) -> FastAPI:
    """Build the OpenAI-compatible app around a loaded pipeline.

    Args:
        pipeline: A ``speechgpt.infer.SpeechGPT`` (or anything with its ``chat`` / ``chat_stream``).
        model_name: The id clients send as ``model``; other ids get 404.
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        limits: Body size, audio length, timeout and queue limits (defaults: :class:`ServerLimits`).

    Returns:
        The FastAPI app; serve it with uvicorn (``speechgpt serve`` does).

    Raises:
        ValueError: when ``model_name`` or ``api_key`` is empty.
    """
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must not be blank (pass None for no key)")
    limits = limits or ServerLimits()
    server = _Server(pipeline, model_name=model_name, limits=limits)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        server.scheduler.shutdown()

    app = FastAPI(
        title="SpeechGPT",
        summary="OpenAI-compatible chat, transcription and speech over a SpeechGPT bundle.",
        version="1",
        lifespan=lifespan,
    )
    app.state.server = server
    app.state.limits = limits
    app.add_middleware(_GuardMiddleware, api_key=api_key, max_body_bytes=limits.max_body_bytes)
    app.add_api_route("/health", server.health, methods=["GET"], summary="Liveness and queue depth (no API key).")
    app.add_api_route("/v1/models", server.list_models, methods=["GET"], summary="The model this server runs.")
    app.add_api_route("/v1/models/{model_id}", server.get_model, methods=["GET"], summary="One model by id.")
    app.add_api_route(
        "/v1/chat/completions", server.chat_completions, methods=["POST"], summary="Chat, text and speech in and out."
    )
    app.add_api_route(
        "/v1/audio/transcriptions", server.transcriptions, methods=["POST"], summary="Speech to text (multipart)."
    )
    app.add_api_route("/v1/audio/speech", server.speech, methods=["POST"], summary="Text to speech (WAV).")

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"unknown request URL: {request.method} {request.url.path}"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed for {request.url.path}"
        else:
            message = str(error.detail)
        return APIError(error.status_code, message, headers=getattr(error, "headers", None)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = _loc(tuple(first.get("loc", ())))
        return APIError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=error)
        return APIError(500, f"internal server error: {type(error).__name__}", type="server_error").response()

    return app


class BackgroundServer:
    """Serves an app with uvicorn in a daemon thread on an already-bound port: for tests, benchmarks, notebooks.

    Example::

        with BackgroundServer(app) as server:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="...")
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self._socket = socket.create_server((host, port))
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        # log_config=None: leave the process's logging alone (uvicorn's own config would rebind the handlers).
        config = uvicorn.Config(app, log_config=None, log_level=log_level, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> BackgroundServer:
        """Start serving; return once the server accepts connections.

        Raises:
            RuntimeError: when the server did not start within ``timeout_s``.
        """
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="speechgpt-http", daemon=True
        )
        self._thread.start()
        end = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server on {self.url} stopped while starting (see the log)")
            if time.monotonic() > end:
                raise RuntimeError(f"the HTTP server on {self.url} did not start within {timeout_s:g} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the server to finish its open requests and exit; wait up to ``timeout_s`` for it."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
