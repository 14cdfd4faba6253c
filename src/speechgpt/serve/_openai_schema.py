"""OpenAI's wire format for the HTTP app: its error shape, the request bodies we read, the bodies we answer with.

Kept apart from the routes so that what a client may send and what it gets back reads on one page: a request is
checked here once (``json_body``) and a malformed one becomes a one-line 400 naming the field, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from speechgpt.infer import Reply

__all__ = [
    "MAX_SPEECH_INPUT_CHARS",
    "SPEECH_FORMATS",
    "TRANSCRIPTION_FORMATS",
    "UNSUPPORTED_CHAT_PARAMETERS",
    "APIError",
    "AudioOutput",
    "ChatMessage",
    "ChatRequest",
    "SpeechRequest",
    "chat_completion",
    "completion_chunk",
    "decode_input_audio",
    "error_location",
    "form_float",
    "json_body",
    "sse_data",
    "usage",
]

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
        """The error as the HTTP response a client receives."""
        return JSONResponse({"error": self.body}, status_code=self.status, headers=self.headers)


# ---------------------------------------------------------------------------------------------------------------
# Request bodies (only the fields we act on; OpenAI clients send more, which is ignored)


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AudioRef(_Schema):
    """An earlier spoken answer, by the id this server gave it."""

    id: str


class ChatMessage(_Schema):
    """One message of ``messages``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None  # a string or a list of parts, checked by hand for clearer messages
    audio: AudioRef | None = None


class AudioOutput(_Schema):
    """``audio`` of a chat request: how a spoken answer is returned."""

    voice: Any = None  # one voice only: accepted and ignored
    format: Literal["wav", "pcm16"] = "wav"


class StreamOptions(_Schema):
    """``stream_options`` of a chat request."""

    include_usage: bool = False


class ChatRequest(_Schema):
    """The body of ``POST /v1/chat/completions``; extra fields are kept so that unsupported ones can be refused."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] | None = Field(default=None, min_length=1)
    audio: AudioOutput | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)


class SpeechRequest(_Schema):
    """The body of ``POST /v1/audio/speech``."""

    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=MAX_SPEECH_INPUT_CHARS)
    voice: Any = None
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)


_M = TypeVar("_M", bound=BaseModel)


def error_location(loc: tuple[Any, ...]) -> str:
    """A validation error's location as a client wrote it: ``messages[0].content``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "request body"


def _validation_error(error: ValidationError) -> APIError:
    first = error.errors(include_url=False)[0]
    where = error_location(tuple(first["loc"]))
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return APIError(400, f"{where}: {first['msg']}{more}", param=where, code="invalid_value")


async def json_body(request: Request, schema: type[_M]) -> _M:
    """The request's JSON body checked against ``schema``; any problem is a 400 naming the field."""
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


def form_float(value: Any, name: str, low: float, high: float) -> float | None:
    """A number from a multipart form field (None when absent), checked against its range."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise APIError(400, f"{name}: expected a number, got {value!r}", param=name) from None
    if not low <= number <= high:
        raise APIError(400, f"{name}: must be between {low:g} and {high:g}, got {number:g}", param=name)
    return number


def decode_input_audio(part: dict[str, Any], where: str) -> bytes:
    """The audio file bytes of an ``input_audio`` content part (base64, or a base64 data URL)."""
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
    return raw


# ---------------------------------------------------------------------------------------------------------------
# Response bodies


def usage(reply: Reply) -> dict[str, int]:
    """OpenAI's ``usage`` object of one reply."""
    prompt, completion = int(reply.prompt_tokens), int(reply.completion_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(model: str, reply: Reply, audio: dict[str, Any] | None) -> dict[str, Any]:
    """A ``chat.completion`` object: the reply's text, and its ``message.audio`` when there is one."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None, "audio": audio}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
        "usage": usage(reply),
    }


def completion_chunk(model: str, completion_id: str, created: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object; every chunk of one stream shares ``completion_id`` and ``created``."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }


def sse_data(payload: dict[str, Any]) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
