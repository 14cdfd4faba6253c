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

This module holds the routes; what keeps them standing under load (limits, queue, stream bridge, API-key and
body-size guard, :class:`BackgroundServer`) is in :mod:`speechgpt.serve._http_runtime`, and OpenAI's request and
response shapes are in :mod:`speechgpt.serve._openai_schema`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from speechgpt.audio import AudioError, encode_pcm16, encode_wav, load_audio
from speechgpt.constants import SAMPLE_RATE
from speechgpt.infer import AudioChunk, Done, Event, GenerationOptions, Reply, TextDelta
from speechgpt.prompt_format import cross_modal_question
from speechgpt.serve._http_runtime import (
    OPEN_PATHS,
    STREAM_END,
    AudioStore,
    BackgroundServer,
    EventBridge,
    GuardMiddleware,
    Scheduler,
    ServerLimits,
    Ticket,
    pipeline_error,
    timeout_error,
)
from speechgpt.serve._openai_schema import (
    SPEECH_FORMATS,
    TRANSCRIPTION_FORMATS,
    UNSUPPORTED_CHAT_PARAMETERS,
    APIError,
    AudioOutput,
    ChatMessage,
    ChatRequest,
    SpeechRequest,
    chat_completion,
    completion_chunk,
    decode_input_audio,
    error_location,
    form_float,
    json_body,
    sse_data,
    usage,
)

logger = logging.getLogger(__name__)

__all__ = [
    "OPEN_PATHS",
    "APIError",
    "BackgroundServer",
    "ChatPipeline",
    "ServerLimits",
    "create_app",
]

_T = TypeVar("_T")


class ChatPipeline(Protocol):
    """What the server needs from a pipeline (``speechgpt.infer.SpeechGPT`` or a test double)."""

    def chat(self, messages: list[dict[str, Any]], options: GenerationOptions | None = None) -> Reply: ...

    def chat_stream(
        self, messages: list[dict[str, Any]], options: GenerationOptions | None = None
    ) -> Iterator[Event]: ...


# ---------------------------------------------------------------------------------------------------------------
# Audio out


def _as_wave(samples: Any, sample_rate: int) -> np.ndarray:
    """Pipeline audio as float32 at :data:`SAMPLE_RATE` (the rate every response promises)."""
    return load_audio(np.asarray(samples), sample_rate=int(sample_rate), max_seconds=None, name="generated audio")


def _reply_wave(reply: Reply) -> np.ndarray | None:
    """The reply's speech at :data:`SAMPLE_RATE` (None when the model said nothing aloud)."""
    if reply.waveform is None or np.asarray(reply.waveform).size == 0:
        return None
    return _as_wave(reply.waveform, reply.sample_rate)


# ---------------------------------------------------------------------------------------------------------------
# The routes


class _Server:
    """The state every route shares (pipeline, limits, queue, remembered audio); routes are its methods."""

    def __init__(self, pipeline: ChatPipeline, *, model_name: str, limits: ServerLimits) -> None:
        from speechgpt.data.templates import Direction, load_templates

        self.pipeline = pipeline
        self.model_name = model_name
        self.limits = limits
        self.scheduler = Scheduler(limits.max_concurrent, limits.max_queue)
        self.audio_store = AudioStore()
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
                audio = self._load_audio(decode_input_audio(part, at), f"{at}.input_audio")
            else:
                raise APIError(
                    400, f"{at}: unsupported content part type {kind!r}; use 'text' or 'input_audio'", param=at
                )
        text = "\n".join(texts)
        if audio is None:
            return text
        audio_part = {"type": "audio", "audio": audio}
        return [{"type": "text", "text": text}, audio_part] if text.strip() else audio_part

    def _assistant_content(self, message: ChatMessage, where: str) -> str | Reply:
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

    def _pipeline_messages(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
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

    async def _run(self, ticket: Ticket, fn: Callable[[], _T], deadline: float) -> _T:
        def guarded() -> _T:
            try:
                return fn()
            except BaseException as e:
                raise pipeline_error(e) from e

        future = ticket.submit(guarded)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            logger.warning("request timed out after %.1f s", self.limits.request_timeout_s)
            raise timeout_error(self.limits) from None

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
        body = await json_body(request, ChatRequest)
        self._check_model(body.model)
        for name, value in (body.model_extra or {}).items():
            if name in UNSUPPORTED_CHAT_PARAMETERS and value not in (None, False, [], {"type": "text"}):
                reason = UNSUPPORTED_CHAT_PARAMETERS[name]
                raise APIError(400, f"{name}: not supported ({reason})", param=name, code="unsupported_parameter")
        modalities = body.modalities or ["text"]
        want_audio = "audio" in modalities
        output = body.audio or AudioOutput()
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
        audio = None
        samples = _reply_wave(reply) if want_audio else None
        if samples is not None:
            audio_id, expires_at = self.audio_store.put(reply)
            data = encode_wav(samples, SAMPLE_RATE) if audio_format == "wav" else encode_pcm16(samples)
            audio = {
                "id": audio_id,
                "data": base64.b64encode(data).decode("ascii"),
                "expires_at": expires_at,
                "transcript": reply.text,
            }
        elif want_audio:
            logger.warning("audio was requested but the model produced no speech; answering with text only")
        return chat_completion(self.model_name, reply, audio)

    async def _stream(
        self,
        ticket: Ticket,
        messages: list[dict[str, Any]],
        options: GenerationOptions,
        deadline: float,
        want_audio: bool,
        include_usage: bool,
    ) -> StreamingResponse:
        bridge = EventBridge(asyncio.get_running_loop())
        ticket.submit(lambda: bridge.pump(lambda: self.pipeline.chat_stream(messages, options)))
        # Wait for the first event so that a failure before any output is still a proper HTTP status.
        first = await bridge.next(deadline, self.limits)
        events = self._sse(bridge, first, deadline, want_audio, include_usage)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def _sse(
        self,
        bridge: EventBridge,
        event: Any,
        deadline: float,
        want_audio: bool,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        audio_id: str | None = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return sse_data(completion_chunk(self.model_name, completion_id, created, [choice]))

        def audio_delta(samples: np.ndarray) -> str:
            return chunk({"audio": {"id": audio_id, "data": base64.b64encode(encode_pcm16(samples)).decode("ascii")}})

        sent_text, sent_audio = "", False
        try:
            yield chunk({"role": "assistant", "content": ""})
            while event is not STREAM_END:
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
                    reply_usage = usage(reply)
                    yield chunk({}, finish_reason=reply.finish_reason)
                    if include_usage:
                        last = completion_chunk(self.model_name, completion_id, created, [])
                        yield sse_data({**last, "usage": reply_usage})
                event = await bridge.next(deadline, self.limits)
            yield "data: [DONE]\n\n"
        except Exception as e:  # the status line has gone out: report in the stream, as OpenAI does
            yield sse_data({"error": pipeline_error(e).body})
        finally:
            bridge.stop.set()  # the client may have gone: stop generating

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
            temperature = form_float(form.get("temperature"), "temperature", 0.0, 2.0)
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
        body = await json_body(request, SpeechRequest)
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
        data = encode_wav(samples, SAMPLE_RATE) if body.response_format == "wav" else encode_pcm16(samples)
        return Response(data, media_type=SPEECH_FORMATS[body.response_format])


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
    app.add_middleware(GuardMiddleware, api_key=api_key, max_body_bytes=limits.max_body_bytes)
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
        where = error_location(tuple(first.get("loc", ())))
        return APIError(400, f"{where}: {first.get('msg', 'invalid value')}", param=where).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=error)
        return APIError(500, f"internal server error: {type(error).__name__}", type="server_error").response()

    return app
