"""What keeps the HTTP app standing under load: limits, admission and queueing, the worker-to-SSE bridge, the
store of spoken answers, the API-key and body-size guard, and a background server for tests and notebooks.

None of it knows a route: :mod:`speechgpt.serve.http_app` builds its routes on these pieces.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import math
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from speechgpt.infer import Reply
from speechgpt.serve._openai_schema import APIError

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_TTL_S",
    "MAX_STORED_AUDIO_IDS",
    "OPEN_PATHS",
    "STREAM_END",
    "AudioStore",
    "BackgroundServer",
    "EventBridge",
    "GuardMiddleware",
    "Scheduler",
    "ServerLimits",
    "Ticket",
    "pipeline_error",
    "timeout_error",
]

OPEN_PATHS = frozenset({"/health"})
"""Routes that answer without an API key (load balancers and probes poll them)."""
AUDIO_TTL_S = 3600
"""How long a spoken answer's id stays valid for multi-turn use (``expires_at``), as OpenAI does."""
MAX_STORED_AUDIO_IDS = 1024
"""Spoken answers remembered for multi-turn use; the oldest are forgotten first."""
_SAFE_RETRY_AFTER_S = 1
_T = TypeVar("_T")


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


# ---------------------------------------------------------------------------------------------------------------
# Admission, queueing and timeouts


class Ticket:
    """One admitted request's place: given to a worker by :meth:`submit`, or handed back when the block ends."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._submitted = False

    def submit(self, fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """Run ``fn`` on a worker; the place is handed back when it ends (or is cancelled), not before."""
        self._submitted = True
        return self._scheduler._submit(fn)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._submitted:
            self._scheduler._release()


class Scheduler:
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

    def admit(self) -> Ticket:
        """Take a place or refuse at once: a full queue is a 429 with ``Retry-After``, never an unbounded wait."""
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
        return Ticket(self)

    def stats(self) -> dict[str, int]:
        """Queue depth for ``/health``."""
        with self._lock:
            return {
                "running": self._running,
                "waiting": self._admitted - self._running,
                "max_concurrent": self.max_concurrent,
                "max_queue": self.max_queue,
            }

    def shutdown(self) -> None:
        """Drop queued work and stop taking more (running generations finish on their own)."""
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


def timeout_error(limits: ServerLimits) -> APIError:
    """The 504 of a request that ran past ``limits.request_timeout_s``."""
    return APIError(
        504,
        f"the request did not finish within the server's timeout of {limits.request_timeout_s:g} s",
        type="timeout_error",
        code="timeout",
    )


def pipeline_error(error: BaseException) -> APIError:
    """A pipeline failure as an API error: bad input (ValueError, AudioError) is the client's, the rest ours."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ValueError):
        return APIError(400, str(error), code="invalid_input")
    logger.error("generation failed", exc_info=error)
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


STREAM_END = object()
"""What :meth:`EventBridge.next` returns once the stream has ended."""


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class EventBridge:
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
            self._put(STREAM_END)

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.stop.set()

    async def next(self, deadline: float, limits: ServerLimits) -> Any:
        """The next event (or :data:`STREAM_END`); a failure in the worker is raised here as an :class:`APIError`."""
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.stop.set()
                raise timeout_error(limits) from None
        if isinstance(item, _Failure):
            raise pipeline_error(item.error)
        return item


# ---------------------------------------------------------------------------------------------------------------
# Spoken answers remembered for multi-turn use


class AudioStore:
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
        """The reply remembered under ``audio_id``; None when unknown, expired or never filled in."""
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


class GuardMiddleware:
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
# Serving in the background


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
