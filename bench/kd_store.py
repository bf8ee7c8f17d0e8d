"""Benchmark: offline KD from the stored teacher top-k against online KD and SFT, in one run, as ratios.

    python bench/kd_store.py                          # 32 optimizer steps per recipe, seeds 0 1 2, 20 held-out prompts
    python bench/kd_store.py --seeds 0 --json /tmp/kd_store.json
    python bench/kd_store.py --steps 2 --seeds 0 --max-eval 4 --train-size 8
                                                      # a check that the bench runs (minutes; numbers meaningless)

(`python -m bench.kd_store ...` from the repository root works too.)

Student, data and scoring are bench/objectives.py's, imported from it: the default student (24 of the embedded
SmolLM2-135M-Instruct's 30 layers, healed --heal-steps steps, cached in the user cache) is every recipe's
`init`; the teacher answers the medicine pack's first --train-size seed tasks (training) and its first
--max-eval held-out eval prompts (greedy, eval.max_new_tokens; cached in --work-dir/data); `assess` scores
each trained student on the held-out prompts.

Recipes, at the same data, batch (--batch-size), max length (256 tokens), number of optimizer steps (--steps)
and learning rate (--lr sets train.learning_rate; kd.learning_rate stays its default, null, so kd trains at
the same rate), the SDK's recipe defaults otherwise (load_recipe(None, overrides=...)):
    sft        train.stages [sft]
    kd-online  train.stages [kd], kd {beta 0, lmbda 0, source online}: GKD with the teacher in memory,
               forward KL over the full vocabulary on the teacher's answers
    kd-store   train.stages [kd], kd {beta 0, lmbda 0, source store, top_k --top-k}: the sparse forward KL
               over the teacher's stored top-k plus a tail bucket (sdk/train/kd_store.py). The store is
               filled once per run from the local teacher (fill_from_local_teacher over the training rows,
               batch eval.batch_size, as the label stage fills it; timed, the teacher already loaded) and
               shared by every seed; the training never loads the teacher.

Columns, per recipe the mean over seeds ± sample standard deviation (untrained: the healed student before
any recipe, measured once in this run):
    KL, top1      per-token KL(teacher || student) over the full vocabulary on the teacher's held-out answers
                  (nats) and top-1 agreement on those tokens (sdk/evaluate/fidelity.py)
    rougeL        ROUGE-L F of the student's greedy held-out answers against the teacher's
    distinct      mean distinct-trigram ratio of those answers; min_distinct the lowest of any answer, any seed
    empty         held-out answers with no word at all, mean over seeds
    s/step        time_per_step_s of the stage in train_metrics.json (trainer runtime / optimizer steps; it
                  leaves out loading the models, so online KD's teacher load is not in it)
    vs_sft        s/step relative to sft's, measured in the same run
    peak_MB       peak resident set size of this process while train_student ran: a thread reads VmRSS from
                  /proc/self/status every 0.2 s (VmHWM is the process lifetime's peak, useless for successive
                  trainings in one process); it includes the teacher this bench holds for scoring
    train_MB      peak_MB minus the RSS when the training started (after gc and malloc_trim), so the memory the
                  training itself added: the student, its optimizer, activations, and for kd-online a second
                  copy of the teacher. Short spikes between two samples can be missed.
    gpu_MB        on CUDA only: torch.cuda.max_memory_allocated during the training minus the allocation before

Then the store (LogitStore.stats()): bytes per token of a record and on disk, the dense fp16 equivalent
(2 x vocabulary bytes per token) and the ratio, and the fill time; then the issue's goals as PASS/FAIL lines:
    kd-store s/step <= 1.3 x sft's
    store <= 130 bytes per token at k = 20 (the record size)
    kd-store KL and top-1 no worse than kd-online's within one sd (the larger sd of the two recipes)
    kd-store KL and top-1 better than sft's

Measured: see docs/training.md
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` as a package when run as a script

from bench.objectives import (  # noqa: E402
    assess,
    build_student,
    fmt,
    held_out_context,
    learning_rates,
    prepare,
    show,
)

RECIPES = {
    "sft": {"stages": ["sft"]},
    "kd-online": {"stages": ["kd"], "kd": {"beta": 0.0, "lmbda": 0.0, "source": "online"}},
    "kd-store": {"stages": ["kd"], "kd": {"beta": 0.0, "lmbda": 0.0, "source": "store"}},
}
MAX_SEQ_LENGTH = 256  # objectives.py's: the teacher's 96-token answers and their prompts fit whole
STEP_RATIO_GOAL = 1.3  # kd-store s/step relative to sft
BYTES_GOAL = 130  # store bytes per token at k = 20


# ---------------------------------------------------------------------------------------------
# peak memory of one training


def rss_bytes() -> Optional[int]:
    """This process's resident set size now (VmRSS), or None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so the next training's baseline is honest."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """Peak RSS (and, on CUDA, peak allocated GPU memory) while the `with` block runs.

    A daemon thread samples VmRSS every `interval` seconds; torch releases the GIL inside its kernels, so the
    thread runs during training steps.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.start = self.peak = None
        self.gpu_start = self.gpu_peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        now = rss_bytes()
        if now is not None:
            self.peak = max(self.peak or 0, now)

    def __enter__(self) -> PeakMemory:
        import torch

        release_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.gpu_start = torch.cuda.memory_allocated()
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self._update()
        if self.gpu_start is not None:
            self.gpu_peak = torch.cuda.max_memory_allocated()

    def summary(self) -> dict:
        mb = 1 / 2**20
        return {
            "peak_rss_mb": round(self.peak * mb) if self.peak else None,
            "train_rss_mb": round((self.peak - self.start) * mb) if self.peak and self.start else None,
            "gpu_mb": round((self.gpu_peak - self.gpu_start) * mb) if self.gpu_peak is not None else None,
        }


# ---------------------------------------------------------------------------------------------
# the store, the trainings


def fill_store(folder: Path, teacher, rows: list[dict], system: str, top_k: int, batch_size: int) -> dict:
    """Fill a fresh store with the teacher's top-k over the training rows (one forward pass each); timed."""
    from sdk.train.logit_store import FillSettings, LogitStore, fill_from_local_teacher

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    with LogitStore(folder, top_k) as store:
        fill = fill_from_local_teacher(
            store, teacher.model, teacher.tokenizer, rows, system, FillSettings(batch_size=batch_size)
        )
    fill_s = time.perf_counter() - start
    stats = LogitStore(folder).stats()
    vocab = len(teacher.tokenizer)
    dense = 2 * vocab  # a dense fp16 row of log-probabilities over the vocabulary, per token
    return dict(
        stats,
        fill_s=round(fill_s, 1),
        fill_rows=fill["rows"],
        vocab=vocab,
        dense_fp16_bytes_per_token=dense,
        dense_over_store=round(dense / stats["bytes_per_token"], 1),
    )


@dataclass(frozen=True)
class Setup:
    """What every training and assessment of the run shares."""

    args: argparse.Namespace
    init: Path  # the healed default student
    data_file: Path  # the teacher's training answers, teacher.jsonl rows
    store: Path  # the filled teacher logit store
    teacher: object  # the loaded local teacher (LocalChatModel), for scoring
    ctx: dict  # objectives.assess's held-out context


def recipe_for(name: str, seed: int, args):
    """The SDK's recipe defaults with this recipe's stages, the shared budget and learning rate, and its kd settings."""
    from sdk.config import load_recipe

    spec = RECIPES[name]
    overrides = {
        "seed": seed,
        "data.max_eval": args.max_eval,
        "train.stages": spec["stages"],
        "train.learning_rate": args.lr,  # kd.learning_rate stays null: kd trains at this rate too
        "train.batch_size": args.batch_size,
        "train.max_seq_length": MAX_SEQ_LENGTH,
        "train.max_steps": args.steps,
        "train.save_steps": 10_000,
        "train.logging_steps": 1,
    }
    for key, value in spec.get("kd", {}).items():
        overrides[f"train.kd.{key}"] = value
    if spec.get("kd", {}).get("source") == "store":
        overrides["train.kd.top_k"] = args.top_k
    return load_recipe(None, overrides=overrides)


def train_and_assess(name: str, seed: int, setup: Setup, generation) -> dict:
    """Train one recipe on one seed from the healed student, measuring its memory; then score it."""
    from sdk.train.common import TrainRequest
    from sdk.train.runner import train_student

    work = setup.args.work_dir / f"{name}-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    recipe = recipe_for(name, seed, setup.args)
    store = setup.store if name == "kd-store" else None  # only kd-store is told where the store is
    request = TrainRequest(
        recipe, setup.data_file, work / "student", work, setup.init, setup.ctx["system"], teacher_logits=store
    )
    start = time.perf_counter()
    with PeakMemory() as memory:
        train_student(request)
    wall = time.perf_counter() - start
    (stage,) = json.loads(request.metrics_file.read_text())["stages"].values()  # one stage per recipe
    row = assess(work / "student", setup.teacher, generation, setup.ctx)
    row.update(
        seed=seed,
        steps=stage["steps"],
        time_per_step=stage["time_per_step_s"],
        source=stage.get("source", "-"),
        wall_s=round(wall, 1),
        learning_rates=learning_rates(recipe),
        **memory.summary(),
    )
    shutil.rmtree(work, ignore_errors=True)
    return row


# ---------------------------------------------------------------------------------------------
# the report


def mean_sd(rows: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return float("nan"), 0.0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def goals(results: dict[str, list[dict]], store: dict) -> list[tuple[str, bool, str]]:
    """The issue's goals: (what, passed, the numbers behind it)."""
    out = []
    sft_step = mean_sd(results["sft"], "time_per_step")[0]
    ratio = mean_sd(results["kd-store"], "time_per_step")[0] / sft_step
    out.append((f"kd-store s/step <= {STEP_RATIO_GOAL} x sft", ratio <= STEP_RATIO_GOAL, f"{ratio:.2f} x"))
    bpt = store["bytes_per_token"]
    out.append(
        (
            f"store <= {BYTES_GOAL} bytes/token at k = {store['top_k']}",
            bpt <= BYTES_GOAL,
            f"{bpt} bytes/token per record, {store['disk_bytes_per_token']} on disk with index and headers",
        )
    )
    for key, label, better in (("kl", "KL", lambda a, b: a < b), ("top1", "top-1", lambda a, b: a > b)):
        kd, kd_sd = mean_sd(results["kd-store"], key)
        online, online_sd = mean_sd(results["kd-online"], key)
        sft = mean_sd(results["sft"], key)[0]
        slack = max(kd_sd, online_sd)  # "within one sd": the larger sd of the two recipes
        no_worse = kd <= online + slack if key == "kl" else kd >= online - slack
        out.append(
            (
                f"kd-store {label} no worse than kd-online (within one sd)",
                no_worse,
                f"{kd:.3f} vs {online:.3f} ± {slack:.3f}",
            )
        )
        out.append((f"kd-store {label} better than sft", better(kd, sft), f"{kd:.3f} vs {sft:.3f}"))
    return out


def print_report(results: dict[str, list[dict]], store: dict, args) -> None:
    sft_step = mean_sd(results["sft"], "time_per_step")[0]
    gpu = any(r.get("gpu_mb") is not None for rows in results.values() for r in rows)
    print(
        f"\n{args.steps} optimizer steps per recipe at batch {args.batch_size}, max length {MAX_SEQ_LENGTH}, "
        f"lr {args.lr} (sft and kd), seeds {args.seeds}; {args.train_size} training and {args.max_eval} held-out "
        f"medicine prompts; student: the default, healed {args.heal_steps} steps"
    )
    header = (
        f"{'recipe':<10} {'KL':>15} {'top1':>15} {'rougeL':>15} {'distinct':>11} {'min_dist':>8} {'empty':>5} "
        f"{'s/step':>13} {'vs_sft':>6} {'peak_MB':>7} {'train_MB':>8}"
    )
    print(header + (f" {'gpu_MB':>7}" if gpu else ""))
    for name, rows in results.items():
        mins = [r["min_distinct"] for r in rows if r["min_distinct"] is not None]
        trained = "time_per_step" in rows[0]
        step = fmt([r["time_per_step"] for r in rows], 2) if trained else "-"
        ratio = f"{mean_sd(rows, 'time_per_step')[0] / sft_step:.2f}" if trained else "-"

        def mem(key: str, rows=rows, trained=trained) -> str:
            return f"{mean_sd(rows, key)[0]:.0f}" if trained and rows[0].get(key) is not None else "-"

        line = (
            f"{name:<10} {fmt([r['kl'] for r in rows], 3):>15} {fmt([r['top1'] for r in rows], 3):>15} "
            f"{fmt([r['rougeL'] for r in rows], 3):>15} {fmt([r['distinct'] for r in rows], 2):>11} "
            f"{(f'{min(mins):.2f}' if mins else '-'):>8} {statistics.fmean(r['empty'] for r in rows):>5.1f} "
            f"{step:>13} {ratio:>6} {mem('peak_rss_mb'):>7} {mem('train_rss_mb'):>8}"
        )
        print(line + (f" {mem('gpu_mb'):>7}" if gpu else ""))
    sources = {
        name: sorted({r.get("source", "-") for r in rows}) for name, rows in results.items() if name != "untrained"
    }
    print(f"kd source per recipe (train_metrics.json): {sources}")
    print(
        f"\nstore: top-{store['top_k']}, {store['rows']} rows, {store['tokens']} tokens; {store['bytes_per_token']} "
        f"bytes/token per record ({store['disk_bytes_per_token']} on disk with index and .npy headers); dense fp16 "
        f"over {store['vocab']} tokens: {store['dense_fp16_bytes_per_token']} bytes/token, "
        f"{store['dense_over_store']}x the record; filled in {store['fill_s']} s"
    )
    print("\ngoals")
    for what, passed, numbers in goals(results, store):
        print(f"  {'PASS' if passed else 'FAIL'}  {what}: {numbers}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps per recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-eval", type=int, default=20, help="held-out prompts scored")
    parser.add_argument("--train-size", type=int, default=48, help="seed tasks the teacher answers for training")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-bench-kd-store/work"))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--batch-size", type=int, default=2, help="train.batch_size of every recipe")
    parser.add_argument("--lr", type=float, default=5e-5, help="train.learning_rate, shared by sft and kd")
    parser.add_argument("--top-k", type=int, default=20, help="kd.top_k: log-probabilities stored per token")
    parser.add_argument(
        "--heal-steps", type=int, default=40, help="healing steps of the default student (HealSettings.steps)"
    )
    args = parser.parse_args(argv)

    from sdk.config import ModelsSettings, load_recipe
    from sdk.models import load_chat_model
    from sdk.packs import resolve_pack
    from sdk.progress import quiet_libraries
    from sdk.store import atomic_write_jsonl

    quiet_libraries()
    pack = resolve_pack("medicine")
    system = pack.spec.system_prompt
    models = ModelsSettings()
    base = load_recipe(None, overrides={"data.max_eval": args.max_eval})  # the SDK's defaults, no preset
    teacher = load_chat_model(models.teacher, models)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    max_new = base.eval.max_new_tokens
    train_rows, teacher_answers = prepare(
        args.work_dir / "data", pack, teacher, system, args.train_size, args.max_eval, max_new
    )
    ctx = held_out_context(teacher, pack, system, teacher_answers, args.max_eval, max_new)
    record = build_student(
        pack, models, teacher, system, ctx["prompts"], ctx["teacher_list"], args.heal_steps, base.eval.heldout_chunks
    )
    print(f"default student {record['student']}: {len(record['prune']['kept'])} layers, folder {record['path']}")

    data_file = args.work_dir / "train_teacher.jsonl"
    atomic_write_jsonl(data_file, train_rows)
    store = fill_store(args.work_dir / "teacher_logits", teacher, train_rows, system, args.top_k, base.eval.batch_size)
    print(f"store: {json.dumps(store)}", flush=True)
    setup = Setup(args, Path(record["path"]), data_file, args.work_dir / "teacher_logits", teacher, ctx)

    generation = models.student.generation
    results: dict[str, list[dict]] = {"untrained": [dict(assess(setup.init, teacher, generation, ctx), seed=None)]}
    show(results["untrained"][0], "untrained")
    for name in RECIPES:
        for seed in args.seeds:
            row = train_and_assess(name, seed, setup, generation)
            results.setdefault(name, []).append(row)
            show(row, f"{name} seed {seed}")

    if args.json:
        report = {
            "student": record,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "store": store,
            "results": results,
            "goals": [{"goal": g, "passed": p, "numbers": n} for g, p, n in goals(results, store)],
        }
        args.json.write_text(json.dumps(report, indent=2))
    print_report(results, store, args)


if __name__ == "__main__":
    main()
