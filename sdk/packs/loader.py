"""Loading one pack folder and discovering all packs.

Discovery order, later overriding earlier with a warning that says which replaced which:
  1. built-in `domains/`
  2. `--pack-path DIR` folders (`pack_paths` in the Python API)
  3. installed distributions with an entry point in the group `sdk.domains`
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateSyntaxError
from pydantic import ValidationError

from sdk.config import YAML_LOAD_ERRORS, not_utf8, printable, yaml_problem
from sdk.errors import PackError
from sdk.packs.schema import EvalRow, PackSpec, SeedRow
from sdk.paths import data_dir

ENTRY_POINT_GROUP = "sdk.domains"
DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parent / "default_prompts"


def _field_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = printable(".".join(str(p) for p in err["loc"])) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        msg = "unknown field" if err["type"] == "extra_forbidden" else printable(msg)
        parts.append(f"field '{loc}': {msg}")
    return "; ".join(parts)


def _read_text(path: Path, where: str = "") -> str:
    """A pack file's text; `where` ("field 'seeds': ") says which field refers to it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PackError(f"{path}: {where}{not_utf8(exc)}") from None
    except OSError as exc:
        raise PackError(f"{path}: {where}cannot be read: {exc.strerror or exc}") from None


@dataclass
class Pack:
    spec: PackSpec
    root: Path
    source: str = "built-in"
    _verifiers: list | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pack_file(self) -> Path:
        return self.root / "pack.yaml"

    # files ------------------------------------------------------------------------------------
    def corpus_dir(self) -> Path:
        return (self.root / self.spec.corpus.path).resolve()

    def corpus_files(self) -> list[Path]:
        exts = {e.lower() for e in self.spec.corpus.extensions}
        return sorted(p for p in self.corpus_dir().rglob("*") if p.is_file() and p.suffix.lower() in exts)

    def _read_rows(self, rel: str, model, field_name: str) -> list:
        path = self.root / rel
        if not path.is_file():
            raise PackError(f"{self.pack_file}: field '{field_name}': file not found: {path}")
        rows, ids = [], set()
        for lineno, line in enumerate(_read_text(path, f"field '{field_name}': ").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = model.model_validate(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PackError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise PackError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
            except ValidationError as exc:
                raise PackError(f"{path}:{lineno}: {_field_errors(exc)}") from None
            if row.id in ids:
                raise PackError(f"{path}:{lineno}: field 'id': duplicate id {row.id!r}")
            ids.add(row.id)
            rows.append(row)
        if not rows:
            raise PackError(f"{path}: no rows")
        return rows

    def seeds(self) -> list[SeedRow]:
        return self._read_rows(self.spec.seeds, SeedRow, "seeds")

    def eval_rows(self) -> list[EvalRow]:
        return self._read_rows(self.spec.eval.path, EvalRow, "eval.path")

    # prompts ----------------------------------------------------------------------------------
    def prompt_path(self, name: str) -> Path:
        rel = self.spec.prompts.get(name)
        return self.root / rel if rel else DEFAULT_PROMPTS_DIR / f"{name}.jinja2"

    def prompt(self, name: str):
        """The Jinja2 template for a prompt: the pack's override, else the SDK default."""
        path = self.prompt_path(name)
        if not path.is_file():
            raise PackError(f"{self.pack_file}: field 'prompts.{name}': file not found: {path}")
        env = Environment(
            loader=FileSystemLoader(str(path.parent)), undefined=StrictUndefined, keep_trailing_newline=False
        )
        try:
            return env.get_template(path.name)
        except TemplateSyntaxError as exc:
            raise PackError(
                f"{path}:{exc.lineno}: field 'prompts.{name}': template error: {printable(exc.message)}"
            ) from None
        except UnicodeDecodeError as exc:
            raise PackError(f"{path}: field 'prompts.{name}': {not_utf8(exc)}") from None

    def render(self, name: str, **variables) -> str:
        variables.setdefault("pack", self.spec)
        variables.setdefault("criteria", self.spec.referee.criteria)
        template = self.prompt(name)
        try:
            return template.render(**variables).strip()
        except Exception as exc:  # jinja2 UndefinedError and friends, or whatever the pack's template raised
            raise PackError(
                f"{self.prompt_path(name)}: field 'prompts.{name}': does not render: "
                f"{type(exc).__name__}: {printable(exc)}"
            ) from None

    # verifiers --------------------------------------------------------------------------------
    def verifiers(self) -> list[tuple[str, Callable[[str, str], list[dict]]]]:
        if self._verifiers is None:
            self._verifiers = [
                (v.name, self._import_function(v.function, f"verifiers[{i}].function"))
                for i, v in enumerate(self.spec.verifiers)
            ]
        return self._verifiers

    def _import_function(self, ref: str, field_name: str):
        module_name, func_name = ref.split(":")
        module_file = self.root / (module_name.replace(".", "/") + ".py")
        if not module_file.is_file():
            raise PackError(f"{self.pack_file}: field '{field_name}': module file not found: {module_file}")
        unique = f"_distillery_pack_{self.name}_{module_name.replace('.', '_')}"
        spec = importlib.util.spec_from_file_location(unique, module_file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a contributor's module: report whatever broke it
            raise PackError(
                f"{module_file}: field '{field_name}': import failed: {type(exc).__name__}: {printable(exc)}"
            ) from None
        func = getattr(module, func_name, None)
        if not callable(func):
            raise PackError(f"{self.pack_file}: field '{field_name}': {module_file.name} has no function {func_name!r}")
        return func

    def run_verifiers(self, instruction: str, answer: str) -> list[dict]:
        """All findings for one answer, each tagged with the verifier that raised it."""
        findings = []
        for name, func in self.verifiers():
            try:
                result = func(instruction, answer) or []
            except Exception as exc:  # a buggy verifier must not sink a run: record it as a finding
                result = [
                    {"label": "verifier-crashed", "severity": "warning", "message": f"{type(exc).__name__}: {exc}"}
                ]
            for f in result:
                findings.append(
                    {
                        "verifier": name,
                        "label": str(f.get("label", "")),
                        "severity": str(f.get("severity", "info")),
                        "message": str(f.get("message", "")),
                    }
                )
        return findings


def load_pack_dir(path: str | Path, source: str = "built-in") -> Pack:
    """Parse and schema-check `path/pack.yaml`. Errors name the file and the field."""
    root = Path(path).resolve()
    pack_file = root / "pack.yaml"
    if not pack_file.is_file():
        raise PackError(f"{pack_file}: file not found (a pack folder needs a pack.yaml)")
    text = _read_text(pack_file)
    try:
        data = yaml.safe_load(text)
    except YAML_LOAD_ERRORS as exc:
        raise PackError(f"{pack_file}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise PackError(f"{pack_file}: the top level must be a mapping")
    try:
        spec = PackSpec.model_validate(data)
    except ValidationError as exc:
        raise PackError(f"{pack_file}: {_field_errors(exc)}") from None
    return Pack(spec=spec, root=root, source=source)


def _entry_point_dirs() -> list[tuple[str, Path]]:
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            warnings.warn(f"pack entry point {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
            continue
        if callable(obj) and not isinstance(obj, ModuleType):
            obj = obj()
        if isinstance(obj, ModuleType):
            obj = Path(obj.__file__).parent
        found.append((f"entry point {ep.name} ({ep.value})", Path(obj)))
    return found


def _pack_dirs_under(folder: Path) -> list[Path]:
    if (folder / "pack.yaml").is_file():
        return [folder]
    return sorted(p.parent for p in folder.glob("*/pack.yaml"))


def discover_packs(pack_paths: list[str | Path] | None = None) -> dict[str, Pack]:
    """All packs by name, in discovery order; a later pack with the same name replaces an earlier one."""
    sources: list[tuple[str, Path]] = [("built-in", d) for d in _pack_dirs_under(data_dir("domains"))]
    for folder in pack_paths or []:
        folder = Path(folder)
        if not folder.is_dir():
            raise PackError(f"--pack-path {folder}: folder not found")
        sources += [(f"pack-path {folder}", d) for d in _pack_dirs_under(folder)]
    for label, folder in _entry_point_dirs():
        sources += [(label, d) for d in _pack_dirs_under(folder)]

    packs: dict[str, Pack] = {}
    for label, folder in sources:
        pack = load_pack_dir(folder, source=label)
        if pack.name in packs:
            old = packs[pack.name]
            warnings.warn(
                f"pack '{pack.name}' from {label} ({folder}) replaces the one from {old.source} ({old.root})",
                stacklevel=2,
            )
        packs[pack.name] = pack
    return packs


def resolve_pack(name: str, pack_paths: list[str | Path] | None = None) -> Pack:
    """Find a pack by name or alias (`medical` -> medicine)."""
    packs = discover_packs(pack_paths)
    if name in packs:
        return packs[name]
    for pack in packs.values():
        if name in pack.spec.aliases:
            return pack
    known = ", ".join(sorted(packs)) or "none"
    raise PackError(f"unknown domain '{name}' (known packs: {known}; see `distill packs list`)")
