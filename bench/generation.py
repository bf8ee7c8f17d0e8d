"""Benchmark: local generation on the embedded teacher, batched (length-sorted, left-padded) vs one at a time.

    python bench/generation.py                        # 16 prompts, 24 new tokens, batch 8, 2 rounds
    python bench/generation.py --prompts 32 --batch-size 16 --max-new-tokens 48
    python bench/generation.py --options-only         # what transformers 5 offers on a CPU, against the SDK's path
    python bench/generation.py --batch-sizes 8,32,64 --prompts 64 --max-new-tokens 96 [--precision on]
    python bench/generation.py --precision-only --prompts 32 --batch-size 32 --max-new-tokens 96

Three methods on the same prompts, greedy: one prompt at a time; batches in input order; batches of
length-sorted prompts (what LocalChatModel does). Tokens counted are the new tokens each answer
really has (up to its end-of-sequence), so the rates are comparable. Then the precision: the
length-sorted batches in fp32 against the SDK's bf16 path and bf16 autocast (generation.bf16), with how
many greedy answers stay identical.

Measured 2026-11-29 on the project's 2-core AVX512-BF16 CPU, idle (torch 2.13, transformers 5.24).
Batch size, `--batch-sizes 8,32,64 --prompts 64 --max-new-tokens 96 --rounds 1`:

    batch size   tokens/s  vs 8    identical to 8          (fp32)
    8               114.2   1.00x  64/64
    32              239.6   2.10x  64/64
    64              284.8   2.49x  64/64
    batch size   tokens/s  vs 8    identical to 8          (--precision on: the bf16 copy)
    8               239.4   1.00x  64/64
    32              448.6   1.87x  16/64
    64              500.3   2.09x  6/64

So the smoke and demo presets generate in batches of 32 (teacher, generator, the student's answers). In fp32
the batch size never changed an answer; in bf16 it does (other kernels round differently), which is why a
bf16 answer is cached under its precision but is not expected to match across batch sizes.

Precision, `--precision-only --prompts 32 --batch-size 32 --max-new-tokens 96 --rounds 2`:

    precision                tokens/s  vs fp32  identical  ROUGE-L to fp32  distinct-trigram
    fp32                        223.9    1.00x    32/32              1.000             0.994
    bf16 (sdk)                  445.3    1.99x     1/32              0.577             0.994
    bf16 autocast               328.3    1.47x     8/32              0.735             0.993

"bf16 (sdk)" is what `generation.bf16: auto` does on a CPU with native bf16: it generates from a bf16 copy of
the weights, made once per model, while the float32 weights keep scoring (log-likelihoods, KL). Autocast over
the float32 weights casts every weight on every token; at batch 8 and 48 new tokens it ran at 0.45x of fp32
(an earlier measurement, under load), at batch 32 at 1.47x. The greedy answers part from fp32's within a
few tokens (ROUGE-L 0.58 between them) and are no more repetitive.

Measured 2026-11-29 on the same CPU, idle, `--options-only --prompts 8 --max-new-tokens 24 --rounds 2
--batch-size 4` (transformers 5.24, torch 2.13 CPU):

    method                      tokens/s  vs sdk  identical
    sdk (dynamic, sdpa)             55.3   1.00x     8/8
    static cache                    53.5   0.97x     8/8
    eager attention                 54.0   0.98x     8/8
    continuous batching             14.7   0.26x     0/8
    static + torch.compile          51.8   0.94x     8/8
    torch.compile's compilation on these prompts' batch shapes: 15.6 s
    on 8 unseen prompts (recompiling for new shapes): torch.compile 0.13x the SDK's tokens per second, identical 8/8

None of these beats the SDK's path, so none was adopted. A static cache, eager attention and torch.compile give
identical greedy answers at 0.94-0.98x, and torch.compile recompiles for every new batch shape (0.13x on
prompts it has not seen; the pipeline never sees one shape twice). Continuous batching (`generate_batch`)
drops the repetition penalty ("RepetitionPenaltyLogitsProcessor isn't supported by CB"), so none of its
answers match, and it ran at 0.26x. An earlier run of this part under heavy load showed torch.compile at
5x: it ran after the load had gone, which is why every option now runs in one rotation per round.
"""

from __future__ import annotations

import argparse
import random
import time

from sdk.config import GenerationSettings, ModelsSettings
from sdk.models import load_chat_model
from sdk.models.base import ChatBackend

TOPICS = [
    "blood pressure",
    "a fever in a child",
    "dehydration",
    "a sprained ankle",
    "insulin doses",
    "sepsis",
    "asthma inhalers",
    "a burn on the hand",
]
FRAMES = [
    "What is {t}?",
    "Explain {t} to a patient in plain words.",
    "List three warning signs related to {t} that should send someone to a doctor, and say why each one matters.",
    "A nurse asks about {t}. Give a short, careful answer with one practical tip.",
]


def prompts(n: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    return [[{"role": "user", "content": rng.choice(FRAMES).format(t=rng.choice(TOPICS))}] for _ in range(n)]


def new_tokens(chat, answers: list[str]) -> int:
    return sum(len(chat.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def in_input_order(chat, convs, settings) -> list[str]:
    """Batches in input order (no length sort): the generic chunked path of ChatBackend."""
    results: list = [None] * len(convs)

    def keep(done):
        for i, out in done:
            results[i] = out

    ChatBackend._answer(chat, list(enumerate(convs)), settings, None, keep)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="each round runs every method once, in a rotated order, so load changes on a shared machine hit all alike",
    )
    parser.add_argument(
        "--precision-only", action="store_true", help="only fp32 against the SDK's bf16 path and bf16 autocast"
    )
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="only these batch sizes against each other, comma-separated (e.g. 8,32,64), in the --precision given",
    )
    parser.add_argument("--precision", choices=("auto", "on", "off"), default="off", help="generation.bf16")
    parser.add_argument(
        "--options-only",
        action="store_true",
        help="only transformers' options (static cache, eager attention, torch.compile, continuous batching)",
    )
    args = parser.parse_args()

    import os

    import torch

    torch.manual_seed(0)
    ms = ModelsSettings()
    chat = load_chat_model(ms.teacher.model_copy(update={"cache": False}), ms)
    convs = prompts(args.prompts)
    batched = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    single = batched.model_copy(update={"batch_size": 1})
    chat.generate(convs[:2], settings=single)  # warm-up
    if args.batch_sizes:
        sizes = [int(x) for x in args.batch_sizes.split(",")]
        batch_sizes(chat, convs, batched.model_copy(update={"bf16": args.precision}), sizes, args.rounds)
        return
    if args.precision_only:
        precision(chat, convs, batched, args.rounds)
        return
    if args.options_only:
        options(chat, convs, batched, args.rounds)
        return

    methods = {
        "one at a time": lambda: chat.generate(convs, settings=single),
        "batched, input order": lambda: in_input_order(chat, convs, batched),
        "batched, length-sorted": lambda: chat.generate(convs, settings=batched),
    }
    seconds = dict.fromkeys(methods, 0.0)
    tokens = dict.fromkeys(methods, 0)
    outputs = {}
    names = list(methods)
    for r in range(args.rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            start = time.perf_counter()
            outputs[name] = methods[name]()
            seconds[name] += time.perf_counter() - start
            tokens[name] += new_tokens(chat, outputs[name])

    rate = {name: tokens[name] / seconds[name] for name in methods}
    print(
        f"embedded teacher {chat.name}: {args.prompts} prompts, up to {args.max_new_tokens} new tokens, batch {args.batch_size}, {args.rounds} rounds; torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    for name in methods:
        print(f"  {name:<24} {rate[name]:8.1f} tokens/s  ({seconds[name]:.1f} s)")
    base = rate["one at a time"]
    print(
        f"speed-up vs one at a time: batched length-sorted {rate['batched, length-sorted'] / base:.2f}x, batched input order {rate['batched, input order'] / base:.2f}x"
    )
    same = sum(a == b for a, b in zip(outputs["one at a time"], outputs["batched, length-sorted"]))
    print(f"length-sorted batched answers identical to one-at-a-time: {same}/{len(convs)}")
    precision(chat, convs, batched, args.rounds)


def precision(chat, convs, settings, rounds: int) -> None:
    """fp32 against the SDK's bf16 path (on a CPU: a bf16 copy of the weights) and against bf16 autocast over the
    fp32 weights, batched and length-sorted, rotated per round; with how often the greedy answers stay identical
    and how repetitive each precision's answers are (mean distinct-trigram ratio)."""
    import contextlib

    import torch

    from sdk.evaluate.degeneration import degeneration_summary
    from sdk.rouge import rouge_l_f

    fp32, bf16 = settings.model_copy(update={"bf16": "off"}), settings.model_copy(update={"bf16": "on"})
    autocast = (
        (lambda: torch.autocast(chat.device.type, dtype=torch.bfloat16))
        if chat.device.type == "cpu"
        else contextlib.nullcontext  # on a GPU the SDK's bf16 path is autocast itself
    )

    def under(context, run_settings):
        def run():
            with context():
                return chat.generate(convs, settings=run_settings)

        return run

    runs = {
        "fp32": under(contextlib.nullcontext, fp32),
        "bf16 (sdk)": under(contextlib.nullcontext, bf16),
        "bf16 autocast": under(autocast, fp32),
    }
    chat.generate(convs[:1], settings=bf16)  # makes the bf16 copy outside the timing
    seconds, tokens, outputs = dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0), {}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            outputs[name] = runs[name]()
            seconds[name] += time.perf_counter() - start
            tokens[name] += new_tokens(chat, outputs[name])
    rate = {name: tokens[name] / seconds[name] for name in runs}
    print(f"  {'precision':<24} {'tokens/s':>8}  {'vs fp32':>7}  identical  ROUGE-L to fp32  distinct-trigram")
    for name in runs:
        same = sum(a == b for a, b in zip(outputs["fp32"], outputs[name]))
        overlap = sum(rouge_l_f(a, b) for a, b in zip(outputs["fp32"], outputs[name])) / len(convs)
        distinct = degeneration_summary(outputs[name])["distinct_trigram_ratio"]
        print(
            f"  {name:<24} {rate[name]:8.1f}  {rate[name] / rate['fp32']:6.2f}x  {same:4d}/{len(convs):<4d}  {overlap:15.3f}  {distinct:16.3f}"
        )


def batch_sizes(chat, convs, settings, sizes: list[int], rounds: int) -> None:
    """The same prompts in batches of each size (length-sorted, left-padded, the SDK's path), rotated per round;
    whether the greedy answers match the first size's."""
    seconds, tokens, outputs = dict.fromkeys(sizes, 0.0), dict.fromkeys(sizes, 0), {}
    for r in range(rounds):
        for size in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
            start = time.perf_counter()
            outputs[size] = chat.generate(convs, settings=settings.model_copy(update={"batch_size": size}))
            seconds[size] += time.perf_counter() - start
            tokens[size] += new_tokens(chat, outputs[size])
    rate = {size: tokens[size] / seconds[size] for size in sizes}
    print(f"  {'batch size':<12} {'tokens/s':>8}  vs {sizes[0]:<4} identical to {sizes[0]}")
    for size in sizes:
        same = sum(a == b for a, b in zip(outputs[sizes[0]], outputs[size]))
        print(f"  {size:<12} {rate[size]:8.1f}  {rate[size] / rate[sizes[0]]:5.2f}x  {same}/{len(convs)}")


def options(chat, convs, settings, rounds: int) -> None:
    """transformers 5's generation options on a CPU, each against the SDK's path (LocalChatModel.generate: dynamic
    KV cache, SDPA attention, eager PyTorch, length-sorted left-padded batches), greedy. Every option runs the same
    batches, all of them in one rotation per round, so a change of load hits each alike. torch.compile is
    compiled (and warmed on these batches) before the rounds, and that time is printed apart; then it is timed
    again on prompts it has not seen, with the SDK's path beside it, because every new input shape recompiles."""
    import torch
    from transformers import GenerationConfig

    from sdk.models.local import sampling_kwargs

    model, tok = chat.model, chat.tokenizer
    greedy = sampling_kwargs(0.0, 1.0, settings.repetition_penalty, tok.pad_token_id)

    def batched(conversations, **extra) -> list[str]:
        texts = [chat.render(c) for c in conversations]
        order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i], add_special_tokens=False)["input_ids"]))
        out: list = [None] * len(texts)
        tok.padding_side = "left"
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            enc = tok([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=settings.max_new_tokens, **greedy, **extra)
            for i, text in zip(batch, tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)):
                out[i] = text.strip()
        return out

    def eager_attention() -> list[str]:
        model.set_attn_implementation("eager")
        try:
            return batched(convs)
        finally:
            model.set_attn_implementation("sdpa")

    def continuous() -> list[str]:
        config = GenerationConfig(max_new_tokens=settings.max_new_tokens, **greedy)
        inputs = [tok(chat.render(c), add_special_tokens=False)["input_ids"] for c in convs]
        results = model.generate_batch(inputs=inputs, generation_config=config, progress_bar=False)
        by_request = sorted(results.values(), key=lambda r: int(str(r.request_id).rsplit("_", 1)[-1]))
        return [tok.decode(r.generated_tokens, skip_special_tokens=True).strip() for r in by_request]

    eager_forward = model.forward
    compiled_forward = torch.compile(eager_forward, dynamic=False)

    def with_compiled(conversations) -> list[str]:
        model.forward = compiled_forward
        try:
            return batched(conversations, cache_implementation="static")
        finally:
            model.forward = eager_forward

    start = time.perf_counter()
    with_compiled(convs)  # compiles a graph per batch shape of these prompts
    compile_s = time.perf_counter() - start

    methods = {
        "sdk (dynamic, sdpa)": lambda: chat.generate(convs, settings=settings),
        "static cache": lambda: batched(convs, cache_implementation="static"),
        "eager attention": eager_attention,
        "continuous batching": continuous,
        "static + torch.compile": lambda: with_compiled(convs),
    }
    seconds, tokens, outputs, failed = dict.fromkeys(methods, 0.0), dict.fromkeys(methods, 0), {}, {}
    names = list(methods)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if name in failed:
                continue
            start = time.perf_counter()
            try:
                outputs[name] = methods[name]()
            except Exception as exc:  # an option this CPU build cannot run is reported, not fatal
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                continue
            seconds[name] += time.perf_counter() - start
            tokens[name] += new_tokens(chat, outputs[name])
    base = tokens[names[0]] / seconds[names[0]]
    print(f"{len(convs)} prompts, {settings.max_new_tokens} new tokens, batch {settings.batch_size}, {rounds} rounds")
    print(f"  {'method':<26} {'tokens/s':>9} {'vs sdk':>7} {'identical':>10}")
    for name in names:
        if name in failed:
            print(f"  {name:<26} failed: {failed[name]}")
            continue
        rate = tokens[name] / seconds[name]
        same = sum(a == b for a, b in zip(outputs[name], outputs[names[0]]))
        print(f"  {name:<26} {rate:9.1f} {rate / base:6.2f}x {same:>5}/{len(convs)}")
    print(f"  torch.compile's compilation on these prompts' batch shapes: {compile_s:.1f} s")

    unseen = prompts(len(convs), seed=1)  # other prompts: other lengths, so other batch shapes
    timed = {}
    for name, run in (
        ("sdk (dynamic, sdpa)", lambda: chat.generate(unseen, settings=settings)),
        ("static + torch.compile", lambda: with_compiled(unseen)),
    ):
        start = time.perf_counter()
        answers = run()
        timed[name] = (new_tokens(chat, answers) / (time.perf_counter() - start), answers)
    ratio = timed["static + torch.compile"][0] / timed["sdk (dynamic, sdpa)"][0]
    same = sum(a == b for a, b in zip(timed["static + torch.compile"][1], timed["sdk (dynamic, sdpa)"][1]))
    print(
        f"  on {len(unseen)} unseen prompts (recompiling for new shapes): torch.compile {ratio:.2f}x the SDK's "
        f"tokens per second, identical {same}/{len(unseen)}"
    )


if __name__ == "__main__":
    main()
