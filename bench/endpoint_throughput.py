"""Benchmark: requests/s of the OpenAI-compatible backend against a server with a fixed latency.

    python bench/endpoint_throughput.py                   # 500 requests, concurrency 32, 200 ms each
    python bench/endpoint_throughput.py --requests 1000 --concurrency 64 --latency 0.1

The server is the test server (tests/openai_server.py: FastAPI + uvicorn on 127.0.0.1) with a fixed
delay per request. It runs in a child process, as a remote endpoint would run on another machine, so
it does not share the client's interpreter lock. With c requests in flight and latency L, no client
can beat c / L requests/s: that is the ideal the achieved rate is printed against (goal: at least 80%).
The client path is the real one: rate-limit checks, the response cache (a fresh file) and a journal
callback per row. One warm-up round of `concurrency` requests runs first, so one-off imports and
setup are not timed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.openai_server

from sdk.config import GenerationSettings, ModelSpec  # noqa: E402
from sdk.models import load_chat_model  # noqa: E402
from tests.openai_server import FakeOpenAIServer  # noqa: E402


def serve(latency: float, conn) -> None:
    """Child process: run the server until told to stop, then report what it saw."""
    with FakeOpenAIServer(latency=latency) as server:
        conn.send(server.base_url)
        conn.recv()
        conn.send({"requests": server.count, "max_in_flight": server.max_in_flight})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each reply")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(args.latency, child), daemon=True)
    proc.start()
    base_url = parent.recv()

    convs = [[{"role": "user", "content": f"question {i}: what is {i} squared?"}] for i in range(args.requests)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = ModelSpec(
            provider="openai",
            base_url=base_url,
            model="bench",
            concurrency=args.concurrency,
            cache_path=str(Path(tmp) / "responses.sqlite"),
            generation=GenerationSettings(max_new_tokens=16),
        )
        model = load_chat_model(spec)
        model.generate([[{"role": "user", "content": f"warm-up {i}"}] for i in range(args.concurrency)])
        start = time.perf_counter()
        out = model.generate(convs, on_chunk=lambda start, outs: rows.extend(outs))
        elapsed = time.perf_counter() - start
    parent.send("stop")
    seen = parent.recv()
    proc.join(timeout=10)
    assert len(rows) == args.requests and all(o.startswith("ok: ") for o in out)
    assert seen["requests"] == args.requests + args.concurrency and seen["max_in_flight"] <= args.concurrency, seen

    achieved = args.requests / elapsed
    ideal = args.concurrency / args.latency
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms: {elapsed:.2f} s (load average {os.getloadavg()[0]:.1f})"
    )
    print(
        f"achieved {achieved:.1f} requests/s; ideal {ideal:.1f} requests/s (concurrency / latency); {100 * achieved / ideal:.1f}% of ideal (goal: >= 80%)"
    )


if __name__ == "__main__":
    main()
