"""The `distill` command. It only parses arguments and calls `sdk` functions."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from sdk.errors import DistilleryError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Distill a small domain assistant from a teacher LLM."
)
packs_app = typer.Typer(no_args_is_help=True, help="List, show, validate and scaffold domain packs.")
app.add_typer(packs_app, name="packs")
cache_app = typer.Typer(no_args_is_help=True, help="The persistent response cache shared by all runs on this machine.")
app.add_typer(cache_app, name="cache")
out = Console(width=None if sys.stdout.isatty() else 120)  # a log file gets the tables unwrapped


STRICT_HELP = "exit with status 3 when a check fails (the forgetting gate)"


def _finish(result, strict: bool = False) -> None:
    from sdk.report import iteration_table, summary_table, timing_table

    if result.status != "finished":  # e.g. a budget was reached: the reason has been printed
        out.print(
            f"run directory: {result.run_dir} (status: {result.status}; finish it with `distill resume {result.run_dir}`)"
        )
        return
    out.print(iteration_table(result.metrics))
    out.print(summary_table(result.metrics))
    if timing_table(result.metrics) is not None:
        out.print(timing_table(result.metrics))
    out.print(
        f"run directory: {result.run_dir}\nstudent: {result.student_path}\nreport: {Path(result.run_dir) / 'report.html'}"
    )
    failed = [v for v in result.metrics.get("checks", {}).values() if v != "passed"]
    if strict and failed:
        Console(stderr=True).print(f"--strict: {'; '.join(failed)}")
        raise click.exceptions.Exit(3)


@click.command("run", help="Run the distillation loop for a domain.")
@click.option("--domain", "-d", required=True, help="pack name or alias, e.g. medical")
@click.option("--preset", default="demo", show_default=True, help="smoke | demo | full")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="recipe YAML layered over the preset")
@click.option("--set", "set_", multiple=True, help="override a recipe key: --set train.epochs=2 (repeatable)")
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="where to write the run (default runs/<domain>-<preset>-<time>)",
)
@click.option(
    "--pack-path", type=click.Path(path_type=Path), multiple=True, help="extra folder to discover packs in (repeatable)"
)
@click.option("--strict", is_flag=True, default=False, help=STRICT_HELP)
def run(**options):
    # click's style: the options arrive as keywords (seven of them), read by name
    from sdk.api import distill

    result = distill(
        domain=options["domain"], preset=options["preset"], run_dir=options["run_dir"], config=options["config"],
        set=list(options["set_"]), pack_paths=list(options["pack_path"]),
    )  # fmt: skip
    _finish(result, options["strict"])


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="a run directory made by `distill run`"),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="change a recipe key before resuming, e.g. a budget: --set models.teacher.budget.max_calls=500",
    ),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
):
    """Finish a stopped run; finished stages and teacher calls are not paid for again."""
    from sdk.api import resume as resume_run

    _finish(resume_run(run_dir, set=set_), strict)


@app.command()
def report(run_dir: Path = typer.Argument(...)):
    """Rewrite report.html and the student's model card from a finished run's metrics.json and print the summary."""
    import json

    from sdk.faults import RunLock
    from sdk.report import iteration_table, summary_table, write_report
    from sdk.report.model_card import write_model_card
    from sdk.store import RunLayout

    metrics_file = RunLayout(run_dir).metrics
    if not metrics_file.is_file():
        raise DistilleryError(f"{run_dir} has no metrics.json (is the run finished? try `distill resume {run_dir}`)")
    with RunLock(run_dir):  # not while a run or another report writes it
        metrics = json.loads(metrics_file.read_text())
        out.print(iteration_table(metrics))
        out.print(summary_table(metrics))
        out.print(f"report: {write_report(run_dir, metrics)}")
        card = write_model_card(run_dir, metrics)
        out.print(f"model card: {card}" if card else "model card: not written (the run has no student/ folder)")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory made by `distill run`"),
    fmt: str = typer.Option("gguf", "--format", help="gguf: one file for llama.cpp and Ollama"),
    qtype: str = typer.Option("f16", "--type", help="f16 | q8_0 (norms stay f32)"),
    out_file: Optional[Path] = typer.Option(
        None, "--out", help="the file to write (default RUN_DIR/export/student-<type>.gguf)"
    ),
):
    """Export the run's student as a GGUF file, with an Ollama Modelfile beside it (docs/deploy.md)."""
    from sdk.export import export_run

    result = export_run(run_dir, fmt, qtype, out_file)
    out.print(
        f"{result.path} ({result.size_bytes / 1e6:.1f} MB, {result.qtype}, {result.tensors} tensors)",
        soft_wrap=True,
        markup=False,
    )
    if result.modelfile is not None:
        out.print(f"Ollama Modelfile: {result.modelfile}", soft_wrap=True, markup=False)
    for note in result.notes:
        out.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)


@click.command("ingest", help="Read, chunk, embed and index a corpus (llama-index + sentence-transformers + FAISS).")
@click.option("--domain", "-d", default=None, help="index this pack's corpus")
@click.option("--corpus", type=click.Path(path_type=Path), default=None, help="index this folder")
@click.option(
    "--index-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="where the index is kept (reused when unchanged)",
)
@click.option("--chunk-size", type=int, default=None, help="tokens per chunk (default: the pack's, else 384)")
@click.option("--chunk-overlap", type=int, default=None, help="overlap in tokens (default: the pack's, else 48)")
@click.option("--index-type", default="auto", show_default=True, help="auto | flat | hnsw | ivf")
@click.option(
    "--flat-max-vectors",
    type=int,
    default=20000,
    show_default=True,
    help="auto: flat index up to this many chunks, HNSW beyond",
)
@click.option(
    "--pack-path", type=click.Path(path_type=Path), multiple=True, help="extra folder to discover packs in (repeatable)"
)
def ingest(**options):
    # click's style: the options arrive as keywords (eight of them), read by name
    from sdk.knowledge.ingest import IndexSettings
    from sdk.knowledge.ingest import ingest as run_ingest

    domain, corpus, index_dir = options["domain"], options["corpus"], options["index_dir"]
    chunk_size, chunk_overlap = options["chunk_size"], options["chunk_overlap"]
    if (domain is None) == (corpus is None):
        raise DistilleryError("give exactly one of --domain NAME or --corpus DIR")
    settings = IndexSettings(index_type=options["index_type"], flat_max_vectors=options["flat_max_vectors"])
    if domain is not None:
        from sdk.packs import resolve_pack

        pack = resolve_pack(domain, list(options["pack_path"]))
        corpus = pack.corpus_dir()
        settings.chunk_size, settings.chunk_overlap = pack.spec.retrieval.chunk_size, pack.spec.retrieval.chunk_overlap
    settings.chunk_size = chunk_size or settings.chunk_size
    settings.chunk_overlap = chunk_overlap if chunk_overlap is not None else settings.chunk_overlap
    if settings.chunk_overlap >= settings.chunk_size:
        raise DistilleryError(
            f"--chunk-overlap ({settings.chunk_overlap}) must be smaller than --chunk-size ({settings.chunk_size})"
        )
    summary = run_ingest(corpus, index_dir, settings)
    table = Table(title=f"ingest {corpus}")
    table.add_column("")
    table.add_column("count", justify="right")
    for label, value in (
        ("files seen", summary.files_seen),
        ("files read", summary.files_indexed),
        ("files unchanged (reused)", summary.files_reused),
        ("files skipped", len(summary.skipped)),
        ("chunks", summary.chunks),
        ("chunks embedded now", summary.chunks_embedded),
    ):
        table.add_row(label, str(value))
    table.caption = f"{summary.index_type} index in {summary.index_dir} · {summary.seconds:.1f}s"
    out.print(table)
    for skip in summary.skipped:
        out.print(f"[yellow]skipped[/yellow] {skip['file']}: {skip['reason']}")


@app.command()
def retrieve(
    query: str = typer.Argument(...),
    index_dir: Path = typer.Option(..., "--index-dir"),
    k: int = typer.Option(5, "--k", min=1),
    as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of a table"),
):
    """The k passages most similar to QUERY."""
    import json

    from sdk.knowledge.retrieve import retrieve as run_retrieve

    passages = run_retrieve(index_dir, query, k)
    if as_json:
        for p in passages:
            print(json.dumps(p.as_dict(), ensure_ascii=False))
        return
    table = Table(title=f"top {k} for: {query}")
    for col in ("score", "chunk", "text"):
        table.add_column(col)
    for p in passages:
        table.add_row(f"{p.score:.3f}", p.chunk_id, p.text[:200].replace("\n", " "))
    out.print(table)


@app.command("filter")
def filter_cmd(
    pool: Path = typer.Option(..., "--pool", help="JSONL of existing instructions (field 'instruction')"),
    candidates: Path = typer.Option(..., "--candidates", help="JSONL of candidate instructions"),
    out_file: Path = typer.Option(..., "--out", help="kept candidates, lines unchanged, in input order"),
    rejected: Optional[Path] = typer.Option(None, "--rejected", help="dropped candidates with the reason"),
    rouge_threshold: float = typer.Option(0.7, min=0.0, max=1.0),
    cosine_threshold: Optional[float] = typer.Option(0.9, help="embedding cosine threshold; 1.0 or more disables it"),
):
    """Keep candidates whose ROUGE-L (and embedding cosine) to the pool and to earlier kept ones is below the thresholds."""
    from sdk.curation.diversity import filter_jsonl

    stats = filter_jsonl(pool, candidates, out_file, rejected, rouge_threshold, cosine_threshold)
    out.print(
        f"kept {stats['kept']} of {stats['candidates']} candidates ({stats['rouge']} dropped by ROUGE-L, {stats['cosine']} by cosine) -> {out_file}"
    )


@packs_app.command("list")
def packs_list(pack_path: list[Path] = typer.Option([], "--pack-path")):
    """Table of discovered packs."""
    from sdk.packs import discover_packs

    table = Table(title="Domain packs")
    for col in ("name", "aliases", "version", "docs", "words", "seeds", "eval", "licence", "source"):
        table.add_column(col, justify="right" if col in ("docs", "words", "seeds", "eval") else "left")
    for pack in discover_packs(pack_path).values():
        s = pack.spec
        files = pack.corpus_files()
        words = sum(
            len(re.sub(r"<[^>]+>", " ", f.read_text(encoding="utf-8", errors="replace")).split()) for f in files
        )  # HTML tags are not words
        table.add_row(
            s.name,
            ", ".join(s.aliases),
            s.version,
            str(len(files)),
            f"{words:,}",
            str(len(pack.seeds())),
            str(len(pack.eval_rows())),
            s.licence,
            pack.source,
        )
    out.print(table)


@packs_app.command("show")
def packs_show(name: str, pack_path: list[Path] = typer.Option([], "--pack-path")):
    """Show one pack's settings."""
    import yaml

    from sdk.packs import resolve_pack

    pack = resolve_pack(name, pack_path)
    out.print(f"[bold]{pack.name}[/bold] {pack.spec.version} from {pack.source} ({pack.root})")
    out.print(yaml.safe_dump(pack.spec.model_dump(mode="json"), sort_keys=False))


@packs_app.command("validate")
def packs_validate(path: Path = typer.Argument(..., help="a pack folder (holding pack.yaml)")):
    """Check a pack: schema, files, rows, prompts, verifiers, seed/eval overlap."""
    from sdk.packs.validate import validate_pack

    results = validate_pack(path)
    table = Table(title=f"validate {path}")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    for r in results:
        table.add_row(r.check, "[green]ok[/green]" if r.ok else "[red]FAIL[/red]", r.detail)
    out.print(table)
    failed = [r for r in results if not r.ok]
    if failed:
        raise DistilleryError(" | ".join(r.detail for r in failed))


@packs_app.command("new")
def packs_new(name: str, path: Path = typer.Option(..., "--path", help="parent folder; the pack goes to PATH/NAME")):
    """Scaffold a pack that validates as it stands."""
    from sdk.packs.scaffold import scaffold_pack

    root = scaffold_pack(name, path)
    out.print(
        f"created {root}\nnext: edit it, then `distill packs validate {root}` and `distill run --domain {name} --pack-path {path} --preset smoke`"
    )


@cache_app.command("stats")
def cache_stats(
    path: Optional[Path] = typer.Option(
        None, "--path", help="cache file (default: $DISTILLERY_RESPONSE_CACHE or <cache>/responses.sqlite)"
    ),
):
    """Entries, size, hits and misses, per model."""
    from sdk.models.cache import ResponseCache

    stats = ResponseCache(path).stats()
    table = Table(title=f"response cache {stats['path']}")
    for col in ("model", "entries", "hits", "misses"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for model, row in sorted(stats["models"].items()):
        table.add_row(model, str(row["entries"]), str(row["hits"]), str(row["misses"]))
    table.caption = f"{stats['entries']} entries, {stats['bytes'] / 1e6:.2f} MB"
    out.print(table)


@cache_app.command("clear")
def cache_clear(
    model: Optional[str] = typer.Option(
        None, "--model", help="clear only this model's entries (as `cache stats` names it)"
    ),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
    path: Optional[Path] = typer.Option(
        None, "--path", help="cache file (default: $DISTILLERY_RESPONSE_CACHE or <cache>/responses.sqlite)"
    ),
):
    """Delete cached replies (all, or one model's)."""
    from sdk.models.cache import ResponseCache

    cache = ResponseCache(path)
    what = f"the entries of model '{model}'" if model else "every entry"
    if not yes and not typer.confirm(f"delete {what} from {cache.path}?"):
        raise typer.Exit(1)
    out.print(f"deleted {cache.clear(model)} entries from {cache.path}")


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="a run directory made by `distill run`"),
    port: int = typer.Option(8000, "--port", help="port to listen on (0: any free port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    model_name: Optional[str] = typer.Option(
        None, "--model-name", help="the model id clients ask for (default distillery-<domain>-student)"
    ),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="answer length when a request gives none"),
):
    """Serve the run's student over an OpenAI-compatible chat-completions API, one request at a time."""
    from sdk.serve import serve as serve_student

    serve_student(run_dir, host, port, model_name, max_tokens)


@app.command()
def chat(
    run_dir: Path = typer.Argument(..., help="a run directory made by `distill run`"),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="longest answer, in tokens"),
):
    """Chat with the run's student in the terminal; /teacher asks the run's teacher the same question."""
    from sdk.chat import run_chat

    run_chat(run_dir, max_tokens)


def command() -> click.Group:
    """The whole command: the typer app, plus `run` and `ingest` written with click (their many options
    arrive as one mapping)."""
    group = typer.main.get_command(app)
    group.add_command(run)
    group.add_command(ingest)
    return group


def main() -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    err = Console(stderr=True)
    try:
        command()(prog_name="distill")
    except (click.exceptions.Exit, typer.Exit) as exc:  # --help, or a command's exit status, from the click commands
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # a bad option: click's usage error
        exc.show()
        sys.exit(exc.exit_code)
    except DistilleryError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        err.print("interrupted: finish it with `distill resume RUN_DIR`")
        sys.exit(130)
    except Exception as exc:  # never a traceback: an OS fault is the user's to fix, anything else is ours
        from sdk.faults import os_fault

        fault = os_fault(exc)
        if fault is not None:
            err.print(
                f"[bold red]error:[/bold red] {fault}; free space or fix the permissions and try again",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(2)
        err.print(
            f"[bold red]internal error:[/bold red] {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (traceback in {crash_log(exc)}; please report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


def crash_log(exc: BaseException) -> str:
    """Write the traceback of an unexpected error to a file and return its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="distill-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(traceback.format_exception(exc)))
    return path


if __name__ == "__main__":
    main()
