"""A real local HTTP server that speaks the OpenAI chat-completions protocol, for tests and benches.

FastAPI on uvicorn, bound to 127.0.0.1 on a free port, run in a background thread:

    with FakeOpenAIServer(faults=["429", "500"], latency=0.2) as server:
        ... point a client at server.base_url ...
    server.requests   # every request body that reached the server, faulted ones included

Replies come from `reply(messages) -> str`: canned text by default, or a real model through
`model_reply(chat_model)`. With `tokenizer=` it also serves vLLM's /tokenize (a prompt, or chat messages
through the tokenizer's chat template); with `prompt_logprobs=` (e.g. `model_prompt_logprobs(chat_model)`)
/v1/completions answers `echo: true` requests with every prompt token's log-probability, as vLLM does. Faults, by name:
    429        HTTP 429 with a Retry-After header (`retry_after`)
    500, 503   HTTP 500 / 503
    400        HTTP 400 (a request the server will never accept)
    401        HTTP 401 (a wrong key)
    echo_auth  HTTP 400 whose error message repeats the Authorization header (a careless server)
    slow       the reply comes after `slow_s` seconds (longer than a client's timeout)
    drop       the connection closes halfway through the body
    malformed  HTTP 200 with a body that is not JSON
    empty      HTTP 200 with an empty message
    garbage    HTTP 200 with JSON that is not a chat completion
A request gets a fault from, in order: `fault_first`-style counters, the `faults` script (one per
request, "ok" for none), `fault_on` (prompt substring -> fault), then `random_faults` (a probability,
with a seeded generator).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

FAULTS = ("429", "500", "503", "400", "401", "echo_auth", "slow", "drop", "malformed", "empty", "garbage")


def model_reply(chat_model):
    """A reply function that answers with a real chat model (e.g. the embedded teacher)."""
    lock = threading.Lock()

    def reply(messages):
        with lock:
            return chat_model.generate([messages])[0]

    return reply


def model_topk(chat_model):
    """A log-probability function for FakeOpenAIServer(topk=...): the model's own top-k at each token of a reply
    (teacher forcing on the chat-rendered prompt, the reply's tokens and the end-of-turn token a server reports
    last), as a vLLM server running that model returns them. Returns [(token_id, logprob, [(id, logprob), ...])]."""
    import torch

    lock = threading.Lock()
    tok = chat_model.tokenizer

    def topk(messages, text: str, k: int):
        prompt = tok(chat_model.render(messages), add_special_tokens=False)["input_ids"]
        answer = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        with lock, torch.inference_mode():
            logits = chat_model.model(input_ids=torch.tensor([prompt + answer])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
        values, ids = logp.topk(k, dim=-1)
        return [(a, float(logp[i, a]), list(zip(ids[i].tolist(), values[i].tolist()))) for i, a in enumerate(answer)]

    return topk


def model_prompt_logprobs(chat_model):
    """A prompt scorer for FakeOpenAIServer(prompt_logprobs=...): the model's log-prob of each prompt token given
    the ones before it (None for the first), as vLLM's echoed completions report them."""
    import torch

    lock = threading.Lock()

    def score(ids: list[int]) -> list:
        with lock, torch.inference_mode():
            logits = chat_model.model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
        return [None] + logp.tolist()

    return score


def synthetic_prompt_logprobs(ids: list[int]) -> list:
    """A prompt scorer without a model: each token's log-prob falls with its id's residue (cheap, deterministic)."""
    return [None] + [-(0.2 + (i % 11) / 5) for i in ids[1:]]


def tokenizer_topk(tokenizer):
    """Log-probabilities without a model: each reply token at -0.1, then k - 1 neighbouring ids, falling off."""

    def topk(messages, text: str, k: int):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [(a, -0.1, [(a, -0.1)] + [((a + j) % len(tokenizer), -2.0 - j) for j in range(1, k)]) for a in ids]

    return topk


def _byte_level_bytes(tokenizer, token_id: int) -> list[int]:
    """A token's bytes as a server reports them (GPT-2 byte-level alphabet, through transformers' own table)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    piece = tokenizer.convert_ids_to_tokens(token_id)
    if token_id in tokenizer.all_special_ids:
        return list(piece.encode("utf-8"))
    table = {c: b for b, c in bytes_to_unicode().items()}
    return [table[c] for c in piece]


def canned_reply(messages):
    """The default reply: 'ok: ' and the last user turn (fast, so it runs on the server's event loop)."""
    return "ok: " + messages[-1]["content"]


def _words(text: str) -> int:
    return max(1, len(str(text).split()))


class FakeOpenAIServer:
    def __init__(
        self,
        reply=canned_reply,
        fail_first: int = 0,
        always_fail_on: str | None = None,
        *,
        faults: list[str] | tuple = (),
        fault_on: dict[str, str] | None = None,
        random_faults: float = 0.0,
        random_kinds: tuple = ("429", "500", "slow", "drop", "malformed", "empty"),
        seed: int = 0,
        latency: float = 0.0,
        slow_s: float = 3.0,
        retry_after: str = "1",
        usage: tuple[int, int] | None = None,
        topk=None,
        tokenizer=None,
        prompt_logprobs=None,
    ):
        for name in list(faults) + list((fault_on or {}).values()) + list(random_kinds):
            if name not in FAULTS + ("ok",):
                raise ValueError(f"unknown fault '{name}' (allowed: {', '.join(FAULTS)}, ok)")
        self.reply = reply
        self.fail_first = fail_first  # answer 503 to this many requests first
        self.always_fail_on = always_fail_on  # answer 500 to any prompt containing this text
        self.faults = list(faults)
        self.fault_on = dict(fault_on or {})
        self.random_faults = random_faults
        self.random_kinds = tuple(random_kinds)
        self.rng = random.Random(seed)
        self.latency = latency  # added to every request, faulted or not
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.usage = usage  # fixed (prompt_tokens, completion_tokens); default: word counts
        self.topk = topk  # (messages, text, k) -> per-token top-k, for requests with logprobs (model_topk)
        self.tokenizer = tokenizer  # names the tokens in logprobs, and serves vLLM's /tokenize when given
        self.prompt_logprobs = prompt_logprobs  # (ids) -> [None, lp, ...]: /v1/completions with echo (vLLM)
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.served: list[str] = []  # the fault (or "ok") each request got, in arrival order
        self.times: list[float] = []  # time.monotonic() of each arrival
        self.in_flight = 0
        self.max_in_flight = 0  # most requests open at once
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (else Nagle's
        # algorithm and delayed ACKs add about 40 ms to every reply)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.app = self._make_app()

    # bookkeeping ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def prompts(self) -> list[str]:
        with self._lock:
            return [r["messages"][-1]["content"] for r in self.requests if r.get("messages")]

    def _pick_fault(self, prompt: str) -> str:
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return "503"
            if self.faults:
                return self.faults.pop(0)
        if self.always_fail_on and self.always_fail_on in prompt:
            return "500"
        for text, fault in self.fault_on.items():
            if text in prompt:
                return fault
        with self._lock:
            if self.random_faults and self.rng.random() < self.random_faults:
                return self.rng.choice(self.random_kinds)
        return "ok"

    # the app ----------------------------------------------------------------------------------
    def _make_app(self) -> FastAPI:
        app = FastAPI()
        server = self

        @app.post("/tokenize")
        async def tokenize(request: Request):  # vLLM's route, at the server's root
            if server.tokenizer is None:
                return JSONResponse({"detail": "Not Found"}, 404)
            body = await request.json()
            if "messages" in body:  # vLLM renders chat messages through the model's template first
                text = server.tokenizer.apply_chat_template(
                    body["messages"], tokenize=False, add_generation_prompt=body.get("add_generation_prompt", True)
                )
                ids = server.tokenizer(text, add_special_tokens=body.get("add_special_tokens", False))["input_ids"]
            else:
                ids = server.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))[
                    "input_ids"
                ]
            return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": 8192})

        @app.post("/v1/completions")
        async def completions(request: Request):
            if server.prompt_logprobs is None:
                return JSONResponse({"detail": "Not Found"}, 404)
            return await server._serve(await request.json(), request, server._completion)

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await server._serve(await request.json(), request, server._chat_completion)

        return app

    async def _serve(self, body: dict, request: Request, answer) -> Response:
        """Record the request, pick its fault, and answer it (the fault's reply, or `answer(body)`)."""
        prompt = str(body["messages"][-1]["content"]) if body.get("messages") else str(body.get("prompt", ""))
        with self._lock:
            self.requests.append(body)
            self.auth_headers.append(request.headers.get("authorization", ""))
            self.times.append(time.monotonic())
        fault = self._pick_fault(prompt)
        with self._lock:
            self.served.append(fault)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return await self._respond(fault, body, request.headers.get("authorization", ""), answer)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _respond(self, fault: str, body: dict, auth: str, answer) -> Response:
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                429,
                headers={"Retry-After": self.retry_after},
            )
        if fault in ("500", "503"):
            return JSONResponse({"error": {"message": "overloaded"}}, int(fault))
        if fault in ("400", "401"):
            return JSONResponse({"error": {"message": "bad request" if fault == "400" else "invalid key"}}, int(fault))
        if fault == "echo_auth":
            return JSONResponse({"error": {"message": f"cannot use the header '{auth}'"}}, 400)
        if fault == "malformed":
            return Response('{"id": "cmpl-1", "choices": [{"message": ', 200, media_type="application/json")
        if fault == "garbage":
            return JSONResponse({"hello": "world"})
        if fault == "drop":

            async def torn():
                yield b'{"id": "cmpl-1", "object": "chat.completion", '
                raise ConnectionAbortedError("fault injection: drop the connection")

            return StreamingResponse(torn(), media_type="application/json")
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        return await answer(body, empty=fault == "empty")

    async def _completion(self, body: dict, empty: bool = False) -> Response:
        """An echoed completion: the prompt ids' log-probs (vLLM's legacy `logprobs` shape) and one generated token."""
        ids = [int(i) for i in body["prompt"]]
        if empty:
            return JSONResponse({"id": "cmpl-1", "object": "text_completion", "choices": []})
        scores = await asyncio.to_thread(self.prompt_logprobs, ids)
        tokens = [self.tokenizer.decode([i]) for i in ids]
        offsets = [sum(len(t) for t in tokens[:n]) for n in range(len(tokens))]
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(tokens) + " the",
                        "logprobs": {
                            "tokens": tokens + [" the"],
                            "token_logprobs": scores + [-1.0],
                            "top_logprobs": [None]
                            + [{t: lp} for t, lp in zip(tokens[1:], scores[1:])]
                            + [{" the": -1.0}],
                            "text_offset": offsets + [offsets[-1] + len(tokens[-1])],
                        },
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
            }
        )

    async def _chat_completion(self, body: dict, empty: bool = False) -> Response:
        if empty:
            text = ""
        elif self.reply is canned_reply:
            text = canned_reply(body["messages"])
        else:  # a reply function may block (a model, a wait): keep the event loop free
            text = await asyncio.to_thread(self.reply, body["messages"])
        prompt_words = sum(_words(m.get("content", "")) for m in body["messages"])
        usage = self.usage or (prompt_words, _words(text))
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        if body.get("logprobs") and self.topk is not None and text:
            entries = await asyncio.to_thread(self.topk, body["messages"], text, int(body.get("top_logprobs") or 0))
            choice["logprobs"] = {"content": [self._logprob_entry(e, body) for e in entries]}
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [choice],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": usage[0] + usage[1],
                },
            }
        )

    def _logprob_entry(self, entry, body: dict) -> dict:
        """One token of choices[0].logprobs.content, as vLLM writes it ("token_id:<id>" when asked for ids)."""
        token_id, logprob, top = entry

        def named(i: int, lp: float) -> dict:
            if body.get("return_tokens_as_token_ids"):
                return {"token": f"token_id:{i}", "logprob": lp, "bytes": None}
            return {
                "token": self.tokenizer.decode([i]),
                "logprob": lp,
                "bytes": _byte_level_bytes(self.tokenizer, i),
            }

        return dict(named(token_id, logprob), top_logprobs=[named(i, lp) for i, lp in top])

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        config = uvicorn.Config(
            self.app, log_level="critical", access_log=False, timeout_graceful_shutdown=1, backlog=2048
        )
        self._server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
