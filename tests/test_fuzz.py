"""Property-based fuzzing of the two inputs users write in YAML: recipes and domain packs.

The property: every generated input either validates, or raises the SDK's own error (DistilleryError or a
subclass) whose message is one line, names the file and, for a field error, names the field. Nothing else
may escape: no KeyError, TypeError, UnicodeDecodeError, yaml, jinja2 or pydantic errors.

The runs are derandomized (the same examples every time) and sized to finish in well under a minute.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import typing
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sdk.config import Recipe, load_recipe, validate_recipe
from sdk.errors import DistilleryError
from sdk.packs import load_pack_dir
from sdk.packs.schema import PROMPT_NAMES, PackSpec
from sdk.packs.validate import sample_prompt_variables, validate_pack
from tests.conftest import TINY_PACKS

ROOT = Path(__file__).resolve().parent.parent
RECIPE_FILES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
TINY = TINY_PACKS / "tiny"

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------------------------------------
# the property


def outcome(fn, *args, **kwargs):
    """fn's result, or the DistilleryError it raised; any other exception propagates and fails the test."""
    try:
        result = fn(*args, **kwargs)
    except DistilleryError as exc:
        event(f"{fn.__name__}: {type(exc).__name__}")
        return exc
    event(f"{fn.__name__}: ok")
    return result


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def names_field(message: str, path: tuple) -> bool:
    """The message names the dotted key, or (for a cross-field check) the section holding it."""
    dotted = _dotted(path)
    if dotted in message or _escaped(dotted) in message:
        return True
    for i in range(1, len(path)):
        section = _escaped(_dotted(path[:i]))
        if f"'{section}'" in message or f"'{section}." in message:
            return True
    return False


def check_error(result, files: list[str], fields: list[tuple] | None = None) -> None:
    """If `result` is an error: one line, names one of `files`, and names one of `fields` when given."""
    if not isinstance(result, DistilleryError):
        return
    message = str(result)
    assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    assert message == message.encode("utf-8", "replace").decode("utf-8"), f"message cannot be printed: {message!r}"
    assert any(f in message for f in files), f"message names none of {files}: {message!r}"
    if fields:
        assert any(names_field(message, p) for p in fields), f"message names none of {fields}: {message!r}"


# ---------------------------------------------------------------------------------------------
# schema-aware mutations of a YAML mapping


def _submodel(annotation) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside an annotation (Optional[M], M, list[M]), and whether it is a list of them."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if typing.get_origin(arg) is list:
            inner = typing.get_args(arg)[0]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner, True
    return None, False


def _literals(annotation) -> list:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [lit for arg in typing.get_args(annotation) for lit in _literals(arg)]


def schema_fields(model: type[BaseModel], prefix: tuple = ()) -> list[tuple[tuple, object]]:
    """(path, FieldInfo) of every field, nested sections included; a list of models is entered at index 0."""
    out = []
    for name, info in model.model_fields.items():
        path = prefix + (name,)
        out.append((path, info))
        sub, is_list = _submodel(info.annotation)
        if sub is not None:
            out += schema_fields(sub, path + ((0,) if is_list else ()))
    return out


ODD_STRINGS = [
    "",
    " ",
    "auto",
    "null",
    "yes",
    "1e-4",
    "0x10",
    "~",
    "a\nb",
    "tab\there",
    "nul\x00byte",
    "ümlaut",
    "\x85",
    "\u2028",
    "\U0001f600",
    "' OR 1=1",
    "{{ jinja }}",
    "x" * 300,
]
KEYS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        ["epochz", "Train", "models.teacher", "", " ", "a\nb", "seed ", "ключ", "model_config", "__class__"]
    ),
    st.integers(-3, 3),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, width=16),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2, 10**30, -(10**30)]),
    st.floats(),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e-320, 0.5, -0.0]),
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
    st.binary(max_size=4),
    st.dates(),
)
JUNK = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=5
)


def _bound_values(info) -> list:
    out = []
    for meta in info.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            v = getattr(meta, attr, None)
            if isinstance(v, (int, float)):
                out += [v, v - 1, v + 1, 2 * v + 1, -v, v - 1e-9, v + 1e-9, float(v) + 0.5]
    return out


def field_values(info, safe_text=None) -> st.SearchStrategy:
    """Wrong types, out-of-range numbers, wrong enum values, wrong shapes, and some valid values."""
    parts = [SCALARS if safe_text is not None else JUNK]
    if info.default is not PydanticUndefined and not callable(info.default):
        parts.append(st.just(info.default))
    bounds = _bound_values(info)
    if bounds:
        parts.append(st.sampled_from(bounds))
    lits = [lit for lit in _literals(info.annotation) if isinstance(lit, str)]
    if lits:
        wrong = [lit.upper() for lit in lits] + [lit + "x" for lit in lits] + [f" {lits[0]}"]
        parts += [st.sampled_from(lits), st.sampled_from(wrong), st.lists(st.sampled_from(lits + wrong), max_size=4)]
    if safe_text is not None:  # a path: never one that escapes the scratch folder (an rglob of / would take ages)
        parts.append(safe_text)
        parts = [p.filter(lambda v: not (isinstance(v, str) and (v.startswith("/") or ".." in v))) for p in parts]
    return st.one_of(parts)


def _get(node, part):
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def apply_mutation(data: dict, op: str, path: tuple, value=None) -> bool:
    """Set or delete data[path], creating missing sections; False where the path needs a list item that is not there."""
    node = data
    for part, nxt in zip(path, path[1:]):
        child = _get(node, part)
        if isinstance(nxt, int):
            if not isinstance(child, list):
                return False
        elif not isinstance(child, dict):
            if isinstance(node, list) and not (isinstance(part, int) and part < len(node)):
                return False
            child = node[part] = {}
        node = child
    last = path[-1]
    if isinstance(node, list) and not (isinstance(last, int) and last < len(node)):
        return False
    if op == "delete":
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            del node[last]
    else:
        node[last] = value
    return True


def mutations(model: type[BaseModel], safe_paths: dict[tuple, st.SearchStrategy] | None = None) -> st.SearchStrategy:
    """One mutation (op, path, value) of a mapping that follows `model`; `safe_paths` are the values for the
    fields that name files (drawn from as often as all other fields together)."""
    safe_paths = safe_paths or {}
    fields = schema_fields(model)
    sections = [()] + [
        p + ((0,) if _submodel(i.annotation)[1] else ()) for p, i in fields if _submodel(i.annotation)[0]
    ]
    known = {s: set(_submodel_at(model, s).model_fields) for s in sections}
    set_field = st.sampled_from(fields).flatmap(
        lambda f: st.tuples(st.just("set"), st.just(f[0]), field_values(f[1], safe_paths.get(f[0])))
    )
    delete_field = st.sampled_from(fields).map(lambda f: ("delete", f[0], None))
    unknown_key = st.sampled_from(sections).flatmap(
        lambda s: st.tuples(
            st.just("set"),
            KEYS.filter(lambda k, s=s: k not in known[s]).map(lambda k, s=s: s + (k,)),
            SCALARS,
        )
    )
    choices = [set_field, set_field, delete_field, unknown_key]
    if safe_paths:
        choices.append(
            st.sampled_from(sorted(safe_paths.items(), key=repr)).flatmap(
                lambda kv: st.tuples(st.just("set"), st.just(kv[0]), kv[1])
            )
        )
    return st.one_of(choices)


def _submodel_at(model: type[BaseModel], section: tuple) -> type[BaseModel]:
    for part in section:
        if isinstance(part, int):
            continue
        model = _submodel(model.model_fields[part].annotation)[0]
    return model


def mutate(base: dict, muts: list) -> tuple[dict, list[tuple]]:
    data = copy.deepcopy(base)
    return data, [path for op, path, value in muts if apply_mutation(data, op, path, value)]


# ---------------------------------------------------------------------------------------------
# text-level damage: invalid YAML, wrong encodings, NUL bytes

FRAGMENTS = [
    ":",
    ": :",
    "[",
    "]",
    "{",
    "}",
    "\t",
    "\x00",
    '"',
    "'",
    "&a ",
    "*a",
    "*nosuch",
    "!!int x",
    "!!float y",
    "!!timestamp z",
    "!!binary é",
    "2001-02-30",
    "0000-01-01",
    "!!python/object:os.system",
    "!!set {a, b}",
    "? [a]\n: b\n",
    "<<: 5\n",
    "%YAML 9.9\n",
    "---\n",
    "...\n",
    "\n  - x\n",
    "- ",
    "\ufeff",
    "é",
    "\x85",
    "\u2028",
    "\x1b[31m",
    "\ud800",
    "a: 1\na: 2\n",
    "\nseed: 2001-02-30\n",
    "\npreset: [1, 2]\n",
    "\npreset: huge\n",
    "\nx" * 3,
    "[" * 300,
    "[" * 3000,
    "{a: " * 3000,
]
BAD_LINES = [  # appended at the end of a valid document, so the parser gets as far as the value
    "seed: 2001-02-30",
    "seed: 0000-01-01",
    "seed: 2001-02-03T25:00:00",
    "seed: !!int abc",
    "seed: !!float x",
    "seed: !!timestamp x",
    "seed: !!binary é",
    "seed: !!python/name:os.system",
    "seed: !custom 1",
    "seed: *nosuch",
    "seed: &a [*a]",
    "models: &m {teacher: *m}",
    "seed: " + "[" * 3000,
    "seed: " + "{a: " * 3000,
    "seed: " + "- " * 500 + "x",
    "? [a]\n: b",
    "<<: [1]",
    "seed: !!set {a, b}",
    'seed: "\\ud800"',
    '"\\x85": 1',
    'seed: "a\\nb"',
    "seed: 1\nseed: 2",
]
WHOLE_TEXTS = ["", "[1, 2]", "just a string", "42", "null", "---\n---\n", "- a\n- b\n", "!!binary AAAA", "{"]
ENCODINGS = ["utf-8", "utf-8", "latin-1", "cp1252", "utf-16", "utf-16-le", "utf-32", "utf-8-sig"]


@st.composite
def damaged_bytes(draw, text: str) -> bytes:
    """`text` with fragments spliced in (or replaced), in some encoding, maybe truncated; or raw bytes."""
    kind = draw(st.sampled_from(["splice", "splice", "append", "append", "whole", "binary"]))
    if kind == "binary":
        return draw(st.binary(max_size=64))
    if kind == "whole":
        text = draw(st.sampled_from(WHOLE_TEXTS))
    if kind == "append":
        text = text.rstrip("\n") + "\n" + draw(st.sampled_from(BAD_LINES)) + "\n"
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(FRAGMENTS) | st.text(max_size=4)) + text[at:]
    data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    if draw(st.booleans()) and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


# ---------------------------------------------------------------------------------------------
# recipes

RECIPE_BASES = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in RECIPE_FILES}
RECIPE_MUTATIONS = mutations(Recipe)


# the bugs this test found first, kept as explicit examples
@example(base="smoke", muts=[("set", ("models", "teacher", "a\nb"), 1)])  # key printed with its newline
@example(base="smoke", muts=[("set", ("preset",), [0])])  # unknown preset: message named neither file nor key
@settings(FUZZ, max_examples=150)
@given(base=st.sampled_from(sorted(RECIPE_BASES)), muts=st.lists(RECIPE_MUTATIONS, min_size=1, max_size=3))
def test_recipe_mapping_fuzz(base, muts):
    data, paths = mutate(RECIPE_BASES[base], muts)
    check_error(outcome(validate_recipe, data, "recipe fuzz.yaml"), ["fuzz.yaml"], paths)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        check_error(outcome(load_recipe, base, config_file=path), [str(path)], paths)


@example("seed: 1\n".encode("utf-16"))  # UnicodeDecodeError
@example(b"seed: 2001-02-30\n")  # ValueError from yaml's date constructor
@example(b"seed: !!timestamp x\n")  # AttributeError from yaml's timestamp constructor
@example(b"seed: " + b"[" * 3000)  # RecursionError from yaml's parser
@settings(FUZZ, max_examples=150)
@given(st.sampled_from(RECIPE_FILES).flatmap(lambda p: damaged_bytes(p.read_text(encoding="utf-8"))))
def test_recipe_file_fuzz(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(content)
        check_error(outcome(load_recipe, "smoke", config_file=path), [str(path)])


OVERRIDE_KEYS = st.one_of(
    st.sampled_from([_dotted(p) for p, _ in schema_fields(Recipe)]),
    st.sampled_from(["train.epochz", "nosuch", "models.teacher.generation.x", "train..epochs", ".", "a b"]),
    st.text(min_size=1, max_size=8).filter(lambda k: "=" not in k and k.strip(". ")),
)
OVERRIDE_VALUES = st.one_of(
    st.sampled_from(["", "1", "-1", "2.5", "nan", ".inf", "[sft, sft]", "{}", "[", "null", "yes", "huge"]),
    st.sampled_from([f for f in FRAGMENTS if "=" not in f and len(f) < 50]),
    st.text(max_size=8),
)


@example([("seed", "2001-02-30")])  # ValueError from yaml's date constructor
@example([("seed", "!!timestamp x")])  # AttributeError
@settings(FUZZ, max_examples=100)
@given(st.lists(st.tuples(OVERRIDE_KEYS, OVERRIDE_VALUES), min_size=1, max_size=3))
def test_recipe_override_fuzz(items):
    overrides = [f"{k}={v}" for k, v in items]
    result = outcome(load_recipe, "smoke", overrides=overrides)
    fields = [tuple(p for p in k.strip().split(".") if p) for k, _ in items]
    check_error(result, ["recipe (preset smoke)", "--set"], fields)


# ---------------------------------------------------------------------------------------------
# domain packs

TINY_SPEC = yaml.safe_load((TINY / "pack.yaml").read_text(encoding="utf-8"))
PACK_FILE_NAMES = [
    "corpus",
    "corpus/heart.md",
    "seeds.jsonl",
    "eval.jsonl",
    "pack.yaml",
    "verifiers.py",
    "nosuch",
    "nosuch.jsonl",
    "prompts/referee.jinja2",
    "",
    ".",
    "a\x00b",
    "\ud800",
    "x" * 300,
    "corpus/" + "y" * 300 + "/z",
]
SAFE_PATH = st.sampled_from(PACK_FILE_NAMES) | st.text(max_size=8)
PACK_MUTATIONS = mutations(
    PackSpec,
    {
        ("corpus", "path"): SAFE_PATH,
        ("seeds",): SAFE_PATH,
        ("eval", "path"): SAFE_PATH,
        ("prompts",): st.dictionaries(st.sampled_from([*PROMPT_NAMES, "nosuch"]), SAFE_PATH, max_size=2),
        ("verifiers", 0, "function"): st.sampled_from(
            [
                "verifiers:check_number",
                "verifiers:nosuch",
                "nosuch:f",
                "corpus.heart:f",
                "os:system",
                "a b:c",
                "m" * 300 + ":f",
            ]
        ),
    },
)


def exercise_pack(root: Path, fields: list[tuple] | None = None) -> None:
    """Load, validate and use the pack at `root`: each step succeeds or raises a good DistilleryError."""
    files = [str(root)]
    pack = outcome(load_pack_dir, root)
    check_error(pack, files, fields)
    for result in validate_pack(root):  # it reports problems, it never raises
        if not result.ok:
            check_error(DistilleryError(result.detail), files)
    if isinstance(pack, DistilleryError):
        return
    for step in (pack.corpus_files, pack.seeds, pack.eval_rows, pack.verifiers):
        check_error(outcome(step), files)
    for name in PROMPT_NAMES:
        check_error(outcome(pack.render, name, **sample_prompt_variables(pack, name)), files)


def copy_tiny(tmp: str) -> Path:
    root = Path(tmp) / "tiny"
    shutil.copytree(TINY, root)
    return root


@example([("set", ("referee", "criteria", 0, "a\nb"), 1)])  # field printed with its newline
@example([("set", ("corpus", "path"), "a\x00b")])  # ValueError: embedded null byte
@example([("set", ("seeds",), "x" * 300)])  # OSError: file name too long
@example([("set", ("prompts",), {"referee": "\ud800"})])  # a lone surrogate in a message
@settings(FUZZ, max_examples=100)
@given(st.lists(PACK_MUTATIONS, min_size=1, max_size=3))
def test_pack_yaml_mapping_fuzz(muts):
    data, paths = mutate(TINY_SPEC, muts)
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_tiny(tmp)
        (root / "pack.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        exercise_pack(root, paths)


@example(b"\xa2")  # UnicodeDecodeError
@example((TINY / "pack.yaml").read_bytes() + b"x: 2001-02-03T25:00:00\n")  # ValueError from yaml
@settings(FUZZ, max_examples=60)
@given(damaged_bytes((TINY / "pack.yaml").read_text(encoding="utf-8")))
def test_pack_yaml_file_fuzz(content):
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_tiny(tmp)
        (root / "pack.yaml").write_bytes(content)
        exercise_pack(root)


TEMPLATES = [
    "Answer this: {{ instruction }}",
    "{{ pack.name }} {{ criteria | length }}",
    "{{ nosuch }}",
    "{{ nosuch.deeper }}",
    "{{ instruction.nosuch.deeper }}",
    "{% if %}",
    "{% for x in %}{% endfor %}",
    "{% endfor %}",
    "{% block a %}",
    "{{ instruction | nosuchfilter }}",
    "{{ {}['a\\nb'] }}",
    "{{ 1 / 0 }}",
    "{{ '%d' % 'x' }}",
    '{% include "nosuch.jinja2" %}',
    '{% extends "../../secret" %}',
    "{% raw %}",
    "{#",
    "{{",
    "}}",
    "{{ }}",
    "",
    "   \n",
    "\x00",
    "é ü",
]
ROWS = [
    '{"id": "x-1", "instruction": "Explain a thing in this field.", "subarea": "a", "task_type": "explain"}',
    '{"id": "x-1", "instruction": "Explain a thing in this field.", "reference": "A reference answer.", '
    '"key_points": ["one point", "two point"], "subarea": "a", "task_type": "explain"}',
    '{"id": 1}',
    "[1, 2]",
    "42",
    "null",
    "not json",
    '{"id": "a\\nb", "instruction": 5}',
    '{"id": "x", "task_type": "EXPLAIN"}',
    "\x00",
    "[" * 10_000,  # hypothesis raises the recursion limit by 2000 while a test runs
    '{"a":' * 4000,
]
VERIFIER_SOURCES = [
    "def check_number(instruction, answer):\n    return []\n",
    "def check_number(instruction, answer):\n    return 5\n",
    "def check_number(instruction, answer):\n    return [{'label': 1}]\n",
    "def check_number(instruction, answer):\n    raise RuntimeError('multi\\nline')\n",
    "check_number = 3\n",
    "raise ValueError('broken\\nat import')\n",
    "import nosuchmodule_for_fuzz\n",
    "def check_number(:\n",
    "x = 'é'\n",
]


@st.composite
def pack_file_damage(draw):
    """(pack.yaml mapping, {relative file: bytes or None to delete}) for damage to the files a pack references."""
    spec = copy.deepcopy(TINY_SPEC)
    files: dict[str, bytes | None] = {}
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "path", "path", "prompt", "prompt", "rows", "verifier"]))
        encoding = draw(st.sampled_from(ENCODINGS))
        if kind == "delete":
            gone = draw(st.sampled_from(["corpus", "corpus/heart.md", "seeds.jsonl", "eval.jsonl", "verifiers.py"]))
            files[gone] = None
        elif kind == "path":
            value = draw(st.sampled_from(PACK_FILE_NAMES))
            field = draw(st.sampled_from(["corpus", "seeds", "eval", "prompts", "verifiers"]))
            if field == "corpus":
                spec["corpus"]["path"] = value
            elif field == "seeds":
                spec["seeds"] = value
            elif field == "eval":
                spec["eval"] = {"path": value}
            elif field == "prompts":
                spec.setdefault("prompts", {})[draw(st.sampled_from(PROMPT_NAMES))] = value
            else:
                spec["verifiers"][0]["function"] = value.replace("/", ".").replace(".jinja2", "") + ":check_number"
        elif kind == "prompt":
            name = draw(st.sampled_from(PROMPT_NAMES))
            rel = draw(st.sampled_from([f"prompts/{name}.jinja2", f"prompts/{name}.jinja2", "nosuch.jinja2", "corpus"]))
            spec.setdefault("prompts", {})[name] = rel
            text = "".join(draw(st.lists(st.sampled_from(TEMPLATES), min_size=1, max_size=3)))
            if rel.startswith("prompts/"):
                files[rel] = text.encode(encoding, errors="replace")
        elif kind == "rows":
            rows = draw(st.lists(st.sampled_from(ROWS), max_size=3))
            target = draw(st.sampled_from(["seeds.jsonl", "eval.jsonl"]))
            files[target] = "\n".join(rows).encode(encoding, errors="replace")
        else:
            files["verifiers.py"] = draw(st.sampled_from(VERIFIER_SOURCES)).encode(encoding, errors="replace")
    return spec, files


def _damage(rel: str, content: bytes) -> tuple[dict, dict]:
    """The tiny pack with one file replaced; a template replaces the synthesis prompt."""
    spec = copy.deepcopy(TINY_SPEC)
    if rel.endswith(".jinja2"):
        spec["prompts"] = {"synthesis": rel}
    return spec, {rel: content}


@example(_damage("seeds.jsonl", "é".encode("latin-1")))  # UnicodeDecodeError
@example(_damage("eval.jsonl", b"[" * 10_000))  # RecursionError from json
@example(_damage("prompts/synthesis.jinja2", "é {{ passage }}".encode("latin-1")))  # UnicodeDecodeError in jinja2
@example(_damage("prompts/synthesis.jinja2", b"{{ passage.nosuch.deeper }}"))  # UndefinedError from Pack.render
@example(_damage("prompts/synthesis.jinja2", b'{% include "nosuch.jinja2" %}'))  # TemplateNotFound from Pack.render
@example(_damage("verifiers.py", b"raise ValueError('broken\\nat import')\n"))  # a two-line message
@settings(FUZZ, max_examples=200)
@given(pack_file_damage())
def test_pack_referenced_files_fuzz(damage):
    spec, files = damage
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_tiny(tmp)
        (root / "pack.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        for rel, content in files.items():
            target = root / rel
            if content is None:
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        exercise_pack(root)
