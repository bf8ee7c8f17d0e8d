"""The `distill` command. It only parses arguments and calls `sdk` functions."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from sdk.errors import DistilleryError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Distill a small domain assistant from a teacher LLM.")
packs_app = typer.Typer(no_args_is_help=True, help="List, show, validate and scaffold domain packs.")
app.add_typer(packs_app, name="packs")
out = Console()


def _finish(result) -> None:
    from sdk.report import summary_table

    out.print(summary_table(result.metrics))
    out.print(f"run directory: {result.run_dir}\nstudent: {result.student_path}\nreport: {Path(result.run_dir) / 'report.html'}")


@app.command()
def run(
    domain: str = typer.Option(..., "--domain", "-d", help="pack name or alias, e.g. medical"),
    preset: str = typer.Option("demo", help="smoke | demo | full"),
    config: Optional[Path] = typer.Option(None, "--config", help="recipe YAML layered over the preset"),
    set_: List[str] = typer.Option([], "--set", help="override a recipe key: --set train.epochs=2 (repeatable)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="where to write the run (default runs/<domain>-<preset>-<time>)"),
    pack_path: List[Path] = typer.Option([], "--pack-path", help="extra folder to discover packs in (repeatable)"),
):
    """Run the distillation loop for a domain."""
    from sdk.api import distill

    _finish(distill(domain=domain, preset=preset, run_dir=run_dir, config=config, pack_paths=pack_path, set=set_))


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="a run directory made by `distill run`")):
    """Finish a stopped run; finished stages and teacher calls are not paid for again."""
    from sdk.api import resume as resume_run

    _finish(resume_run(run_dir))


@app.command()
def report(run_dir: Path = typer.Argument(...)):
    """Rewrite report.html from a finished run's metrics.json and print the summary."""
    import json

    from sdk.report import summary_table, write_report

    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise DistilleryError(f"{run_dir} has no metrics.json (is the run finished? try `distill resume {run_dir}`)")
    metrics = json.loads(metrics_file.read_text())
    out.print(summary_table(metrics))
    out.print(f"report: {write_report(run_dir, metrics)}")


@packs_app.command("list")
def packs_list(pack_path: List[Path] = typer.Option([], "--pack-path")):
    """Table of discovered packs."""
    from sdk.packs import discover_packs

    table = Table(title="Domain packs")
    for col in ("name", "aliases", "version", "docs", "seeds", "eval", "licence", "source"):
        table.add_column(col)
    for pack in discover_packs(pack_path).values():
        s = pack.spec
        table.add_row(s.name, ", ".join(s.aliases), s.version, str(len(pack.corpus_files())), str(len(pack.seeds())), str(len(pack.eval_rows())), s.licence, pack.source)
    out.print(table)


@packs_app.command("show")
def packs_show(name: str, pack_path: List[Path] = typer.Option([], "--pack-path")):
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
    out.print(f"created {root}\nnext: edit it, then `distill packs validate {root}` and `distill run --domain {name} --pack-path {path} --preset smoke`")


def main() -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except DistilleryError as exc:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finish it with `distill resume RUN_DIR`")
        sys.exit(130)


if __name__ == "__main__":
    main()
