"""Benchmark: does the referee's hard/easy feedback beat plain generation? (Lion's claim, at equal teacher labels.)

    python bench/loop_vs_sft.py                                   # demo preset, seeds 0 1 2: six demo runs (estimated 3+ hours on 2 idle cores)
    python bench/loop_vs_sft.py --seeds 0 1 --iterations 2        # shorter
    python bench/loop_vs_sft.py --preset smoke --seeds 0 --iterations 2 --json /tmp/loop_vs_sft.json   # a check that it runs

Measured (smoke scale only; the demo-scale run did not fit in a session on 2 cores), see docs/adversarial-loop.md:
    python bench/loop_vs_sft.py --preset smoke --seeds 0 1 2 --iterations 2 --set data.max_eval=6 \
        --set adversarial.new_per_iteration=6 --set adversarial.max_attempts=12 --set curation.passages=3 \
        --set train.epochs=1 --set adversarial.generate_last=false
    recipe          labelled              kl            top1          rougeL        relative       distinct3
    loop          12.7 ± 2.9   1.764 ± 0.031   0.402 ± 0.008   0.167 ± 0.016      70.5 ± 1.8   0.996 ± 0.003
    sft           13.7 ± 2.1   1.845 ± 0.165   0.391 ± 0.007   0.152 ± 0.023      68.4 ± 1.2   0.979 ± 0.029
    loop/sft           0.927           0.956           1.027           1.094           1.030           1.018

Each run is the whole pipeline, `sdk.distill(domain="medical", preset=--preset, seed=s, ...)`, with the
forgetting check off (`forgetting.enabled=false`) to save time. Two recipes, the same everywhere else
(generator, prompts, filters, N_new, attempt budget, seeds, corpus; training is SFT on the teacher's answers
in both (the preset's objective), so each labels the same number of instructions up to what the filters keep):
    loop   the default loop: generation draws parents from the referee's hard and easy instructions
           (`adversarial.feedback=referee`)
    sft    the baseline: generation draws parents uniformly from the whole cache pool, ignoring the split
           (`adversarial.feedback=none`); the referee still runs, so its hard ratio is still reported

Columns, read from metrics.json after each run, means over seeds (± sample standard deviation):
    labelled     instructions the teacher answered (metrics["data"]["teacher_ok"]), over all iterations
    kl           per-token KL(teacher || student) on the held-out prompts (lower = closer)
    top1         top-1 token agreement with the teacher on the held-out prompts
    rougeL       ROUGE-L F of the student's held-out answers against the teacher's
    relative     Lion's relative score: the student's total referee score as % of the teacher's
    distinct3    distinct-trigram ratio of the student's answers (low = repetitive, degenerate)
The last row is loop/sft: the ratio of the two recipes' means. `n/a` marks a metric this checkout's
metrics.json does not have.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

RECIPES = {"loop": "referee", "sft": "none"}  # recipe -> adversarial.feedback
BASELINE = "sft"
# (column, key in metrics["eval"]["after"], digits)
METRICS = [
    ("kl", "kl_per_token", 3),
    ("top1", "top1_agreement", 3),
    ("rougeL", "rougeL_vs_teacher", 3),
    ("relative", "relative_score", 1),
    ("distinct3", "distinct_trigram_ratio", 3),
]


def run_one(name: str, seed: int, args, extra: dict) -> dict:
    """One whole distillation run; returns the per-seed values the table needs."""
    import sdk
    from sdk.store import RunLayout

    run_dir = args.work_dir / f"{name}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # distill() refuses a folder that already holds a run
    overrides = {**extra, "adversarial.feedback": RECIPES[name]}
    start = time.perf_counter()
    result = sdk.distill(domain="medical", preset=args.preset, run_dir=run_dir, seed=seed, **overrides)
    wall = time.perf_counter() - start
    if result.status != "finished":
        raise SystemExit(f"{name} seed {seed}: the run {result.status} ({run_dir}/manifest.json says why)")
    layout = RunLayout(run_dir)
    metrics = json.loads(layout.metrics.read_text())
    after = metrics["eval"]["after"]
    row = {
        "seed": seed,
        "run_dir": str(run_dir),
        "wall_s": round(wall, 1),
        "labelled": metrics["data"]["teacher_ok"],
        "generated": metrics["data"]["generated"],
    }
    row.update({key: after.get(key) for _, key, _ in METRICS})
    row["hard_ratio"] = [it["discrimination"].get("hard_ratio") for it in metrics["iterations"]]
    answers = [json.loads(line) for line in layout.eval.student_after.read_text().splitlines() if line.strip()]
    row["answers"] = [a.get("answer") for a in answers[:3]]  # a look at what the student says
    if not args.keep_models:  # the run's artifacts stay for auditing; the weights (hundreds of MB each) go
        for model_dir in [layout.student, *(it.student for it in layout.iterations())]:
            shutil.rmtree(model_dir, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", choices=["smoke", "demo", "full"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=None, help="loop iterations (default: the preset's)")
    parser.add_argument(
        "--set",
        dest="set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recipe override, for both recipes (repeatable)",
    )
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/distillery-bench-loop-vs-sft"))
    parser.add_argument("--keep-models", action="store_true", help="keep the students' weights in the run folders")
    parser.add_argument("--json", type=Path, default=None, help="also write every per-seed value here")
    args = parser.parse_args()

    from sdk.config import parse_override

    extra: dict = {"forgetting.enabled": False}
    if args.iterations is not None:
        extra["adversarial.iterations"] = args.iterations
    for item in args.set:
        parts, value = parse_override(item)
        if parts in (["adversarial", "feedback"], ["seed"], ["domain"]):
            parser.error(f"{'.'.join(parts)} is set by the bench (the recipe, --seeds, medical); it cannot be --set")
        extra[".".join(parts)] = value
    args.work_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, list[dict]] = {name: [] for name in args.recipes}
    for seed in args.seeds:  # seed-major, so an interrupted bench still has both recipes for the seeds it finished
        for name in args.recipes:
            row = run_one(name, seed, args, extra)
            results[name].append(row)
            shown = {k: v for k, v in row.items() if k not in ("answers", "run_dir")}
            print(
                f"{name} seed {seed}: {json.dumps(shown)}; first answer {(row['answers'] or [''])[0]!r:.120}",
                flush=True,
            )
            if args.json:  # rewritten after every run, so a long bench that dies keeps what it measured
                args.json.write_text(
                    json.dumps(
                        {"preset": args.preset, "seeds": args.seeds, "overrides": extra, "results": results}, indent=2
                    )
                )
    print_table(results, args, extra)


def mean_sd(values: list) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list, digits: int) -> str:
    stats = mean_sd(values)
    return "n/a" if stats is None else f"{stats[0]:.{digits}f} ± {stats[1]:.{digits}f}"


def ratio(results: dict[str, list[dict]], key: str) -> str:
    loop, base = (
        mean_sd([r[key] for r in results.get("loop", [])]),
        mean_sd([r[key] for r in results.get(BASELINE, [])]),
    )
    if loop is None or base is None or base[0] == 0:
        return "n/a"
    return f"{loop[0] / base[0]:.3f}"


def print_table(results: dict[str, list[dict]], args, extra: dict) -> None:
    print(f"\nmedicine, preset {args.preset}, seeds {args.seeds}, overrides {extra}; mean ± sample std over seeds")
    header = f"{'recipe':<10} {'labelled':>13}" + "".join(f" {col:>15}" for col, _, _ in METRICS)
    print(header)
    for name, rows in results.items():
        print(
            f"{name:<10} {fmt([r['labelled'] for r in rows], 1):>13}"
            + "".join(f" {fmt([r[key] for r in rows], d):>15}" for _, key, d in METRICS)
        )
    print(
        f"{'loop/' + BASELINE:<10} {ratio(results, 'labelled'):>13}"
        + "".join(f" {ratio(results, key):>15}" for _, key, _ in METRICS)
    )


if __name__ == "__main__":
    main()
