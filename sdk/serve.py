"""`distill serve RUN_DIR`: the run's student behind an OpenAI-compatible chat-completions API (FastAPI + uvicorn).

    GET  /v1/models             the one served model (`distillery-<domain>-student`, or --model-name)
    POST /v1/chat/completions   messages, max_tokens / max_completion_tokens, temperature, top_p, stop (up to 4),
                                n=1, seed, stream (server-sent events in OpenAI's chunk format, with
                                stream_options.include_usage), logprobs / top_logprobs (not with stream)
    GET  /health                {"status": "ok"}

Requests are served one at a time: a lock around the model admits one generation at a time, and the others
wait their turn. A streamed answer holds the lock until its last chunk, or until the client goes away (the
generation then stops within a token); a non-streamed one is generated to the end.

A request without a system message gets the pack's system prompt first, as the student was trained.
Fields left out take the run's own settings for the student (config.yaml's models.student.generation:
greedy, with its repetition penalty; `repetition_penalty` may be sent, as vLLM allows), and max_tokens
defaults to --max-tokens, cut to what the context window has left. The requested model must be the served one.

Every error is an OpenAI-style JSON body, {"error": {"message", "type", "param", "code"}}, never a
traceback: 400 for a request the server cannot honour (a bad value, n > 1, tools, images, penalties other
than 0, a conversation longer than the context window), 404 for another model or route.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal, Optional, Union

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException

from sdk.chat import DEFAULT_MAX_TOKENS, ContextTooLong, Generation, Reply, RunStudent, Sampling, load_run_student
from sdk.errors import DistilleryError

MAX_STOPS = 4  # as OpenAI allows


# ---------------------------------------------------------------------------------------------
# the request


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Body):
    """One turn. Content is text, or a list of text parts; `developer` is read as `system`."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[dict]]
    name: Optional[str] = None  # accepted, not used

    @field_validator("content")
    @classmethod
    def _text_only(cls, content):
        if isinstance(content, list):
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(f"only text content parts are supported, got type '{part.get('type')}'")
        return content

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p["text"] for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text"]


class ChatCompletionRequest(_Body):
    """The fields of OpenAI's chat-completions request that a local student can honour; any other field is a 400."""

    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    n: Optional[int] = None
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**64)
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = Field(None, ge=1.0, le=2.0)  # vLLM's extension
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = None  # accepted, not used
    metadata: Optional[dict] = None  # accepted, not used
    store: Optional[bool] = None  # accepted, not used

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n):
        if n is not None and n != 1:
            raise ValueError(f"n must be 1 (this server generates one choice per request), got {n}")
        return n

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value, info):
        if value:
            raise ValueError(
                f"{info.field_name} is not supported (only 0); send repetition_penalty instead, got {value}"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"stop must be at most {MAX_STOPS} non-empty strings")
        return stop

    @model_validator(mode="after")
    def _logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.logprobs and self.stream:
            raise ValueError("logprobs are supported without stream only")
        return self

    def messages_dicts(self) -> list[dict]:
        return [m.as_dict() for m in self.messages]

    def sampling(self, defaults: Sampling) -> Sampling:
        """The request's sampling, with the run's defaults for what it leaves out."""
        max_tokens = self.max_completion_tokens or self.max_tokens or defaults.max_tokens
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(
            max_tokens=max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            repetition_penalty=self.repetition_penalty or defaults.repetition_penalty,
            stop=stops,
            seed=self.seed,
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else None,
        )


class APIError(Exception):
    """A request the server refuses, sent back as OpenAI's error JSON."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_message(errors: list[dict]) -> tuple[str, Optional[str]]:
    """(one readable message, the offending field) from pydantic's errors."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return f"unsupported parameter '{param}'", param
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if param is None:  # the body as a whole: missing, or not an object
        return "the request body must be a JSON object (Content-Type: application/json)", None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    named = param is None or msg.startswith(loc[-1])  # "n must be 1 ..." names its field already
    return (msg if named else f"{param}: {msg}"), param


# ---------------------------------------------------------------------------------------------
# the response


def completion_json(reply: Reply, model: str) -> dict:
    """OpenAI's ChatCompletion object for one finished answer."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "logprobs": {"content": reply.logprobs} if reply.logprobs is not None else None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": usage_json(reply),
    }


def usage_json(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def sse(obj: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class StudentServer:
    """The run's student behind a lock: one generation at a time, streamed or not."""

    def __init__(self, student: RunStudent, max_tokens: int = DEFAULT_MAX_TOKENS):
        self.student = student
        self.defaults = student.default_sampling(max_tokens)
        self.lock = threading.Lock()
        self.created = int(time.time())

    @property
    def model_name(self) -> str:
        return self.student.model_name

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this server serves '{self.model_name}'",
                "model",
                "model_not_found",
            )

    def complete(self, request: ChatCompletionRequest) -> dict:
        with self.lock:
            reply = self.student.complete(request.messages_dicts(), request.sampling(self.defaults))
        return completion_json(reply, self.model_name)

    def prepare_stream(self, request: ChatCompletionRequest) -> Iterator[str]:
        """The events of a streamed answer. The prompt is checked now, so a bad one is a 400, not a broken stream."""
        with self.lock:  # the tokenizer is shared with a generation in flight
            ids, sampling = self.student.prepare(request.messages_dicts(), request.sampling(self.defaults))
        usage = bool(request.stream_options and request.stream_options.include_usage)
        return self._events(ids, sampling, usage)

    def _events(self, ids: list[int], sampling: Sampling, include_usage: bool) -> Iterator[str]:
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model_name,
        }

        def chunk(delta: dict, finish: Optional[str] = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return sse(dict(head, choices=[choice], **({"usage": None} if include_usage else {})))

        with self.lock:
            generation = Generation(self.student.chat, ids, sampling)
            pieces = iter(generation)
            yield chunk({"role": "assistant", "content": ""})
            try:
                for piece in pieces:
                    yield chunk({"content": piece})
            except Exception as exc:  # the stream has begun: the error goes in an event, never a traceback
                yield sse(error_body(f"generation failed: {type(exc).__name__}: {exc}", "server_error"))
                return
            finally:
                pieces.close()  # a client that went away: stop generating before the lock is released
        reply = generation.reply
        yield chunk({}, reply.finish_reason)
        if include_usage:
            yield sse(dict(head, choices=[], usage=usage_json(reply)))
        yield "data: [DONE]\n\n"


async def relay(events: Iterator[str]) -> AsyncIterator[str]:
    """The events of a (blocking) generator, each read on a worker thread. However the stream ends (done,
    the client gone, the server stopping), the generator is closed here: its generation stops and the
    model's lock is released now, not whenever the garbage collector gets to it."""
    try:
        while (event := await anyio.to_thread.run_sync(next, events, None)) is not None:
            yield event
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(events.close)


class EventStream(StreamingResponse):
    """A server-sent event stream that always closes its source, also when sending fails."""

    def __init__(self, events: Iterator[str]):
        super().__init__(relay(events), media_type="text/event-stream")

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def build_app(server: StudentServer) -> FastAPI:
    """The FastAPI app for a StudentServer."""
    app = FastAPI(title="Distillery student", docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(APIError)
    async def refused(request: Request, exc: APIError):
        return JSONResponse(error_body(exc.message, param=exc.param, code=exc.code), status_code=exc.status)

    @app.exception_handler(ContextTooLong)
    async def too_long(request: Request, exc: ContextTooLong):
        return JSONResponse(error_body(str(exc), param="messages", code="context_length_exceeded"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        message = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return JSONResponse(error_body(message, "server_error"), status_code=500)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [model_card(server)]}

    @app.get("/v1/models/{model_id}")
    def model(model_id: str):
        server.check_model(model_id)
        return model_card(server)

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest):  # sync: FastAPI runs it on a worker thread
        server.check_model(request.model)
        if request.stream:
            return EventStream(server.prepare_stream(request))
        return JSONResponse(server.complete(request))

    return app


def model_card(server: StudentServer) -> dict:
    return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "distillery"}


# ---------------------------------------------------------------------------------------------
# running it


def create_app(run_dir: str | Path, model_name: Optional[str] = None, max_tokens: int = DEFAULT_MAX_TOKENS):
    """Load a run's student and build its app (the student loads once, here)."""
    return build_app(StudentServer(load_run_student(run_dir, model_name), max_tokens))


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise DistilleryError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port") from None
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def banner(url: str, model_name: str) -> str:
    """What `distill serve` prints before it starts: the URL and how to call it."""
    body = json.dumps({"model": model_name, "messages": [{"role": "user", "content": "Hello"}]})
    return (
        f"serving {model_name} at {url} (one request at a time; Ctrl-C stops)\n"
        f"  OPENAI_BASE_URL={url} OPENAI_API_KEY=unused  (any OpenAI client; model '{model_name}')\n"
        f"  curl {url}/chat/completions -H 'Content-Type: application/json' -d '{body}'"
    )


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: Optional[str] = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> None:
    """Serve a run's student until Ctrl-C: bind the port (a busy one fails at once), load the student, print
    the URL, run uvicorn."""
    import uvicorn

    sock = bind_socket(host, port)
    try:
        app = create_app(run_dir, model_name, max_tokens)
        print(banner(base_url(sock), app.state.server.model_name), flush=True)
        config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
