"""Export a run's student as a GGUF file for llama.cpp and Ollama (`distill export RUN_DIR --format gguf`).

The file is written with llama.cpp's own Python writer (the `gguf` package), in llama.cpp's layout for the
`llama` architecture, which is what SmolLM2 and its pruned students are:

  tensors    HF names mapped with gguf's TensorNameMap (model.layers.3.self_attn.q_proj.weight -> blk.3.attn_q.weight);
             q_proj / k_proj rows permuted for llama.cpp's rotary embedding (see `rope_permute`); lm_head written
             only when it is not the token embedding (SmolLM2 ties them); f16, or q8_0 for the 2-D weights, with
             norms and other 1-D tensors kept in f32 as llama.cpp does
  metadata   the llama.* hyperparameters, general.file_type, and the tokenizer as llama.cpp's `gpt2` (byte-level
             BPE) vocabulary: tokens, token types, merges, special token ids, pre-tokenizer name, chat template

Beside the file goes an Ollama `Modelfile` (FROM, a TEMPLATE equivalent to the chat template, the pack's system
prompt as SYSTEM, stop tokens). docs/deploy.md shows how to run both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from sdk.errors import ConfigError, DistilleryError, ModelError

FORMATS = ("gguf",)
TYPES = ("f16", "q8_0")

# llama.cpp picks a pre-tokenizer (the regex that splits text before BPE) by name. Ours are recognised by a
# fingerprint of the vocabulary and merges (`vocab_fingerprint`); the embedded teacher's GGUF names SmolLM2's.
KNOWN_PRE_TOKENIZERS = {
    "e86e5bd807a389e104ea676661ca970d502d7d97301f42c57685dad1eb423aac": "smollm",  # SmolLM2 (the embedded teacher)
}
CHATML_STOPS = ("<|im_start|>", "<|im_end|>")


@dataclass
class ExportResult:
    """What `export_run` wrote."""

    path: Path
    size_bytes: int
    qtype: str
    tensors: int
    modelfile: Optional[Path] = None
    notes: list[str] = field(default_factory=list)  # what the user should know: a guessed pre-tokenizer, no TEMPLATE


# ---------------------------------------------------------------------------------------------
# the run


def default_export_path(run_dir: str | os.PathLike, qtype: str) -> Path:
    """RUN_DIR/export/student-<type>.gguf"""
    from sdk.store import RunLayout

    return RunLayout(Path(run_dir)) / "export" / f"student-{qtype}.gguf"


def export_run(
    run_dir: str | os.PathLike, fmt: str = "gguf", qtype: str = "f16", out: Optional[str | os.PathLike] = None
) -> ExportResult:
    """Export the student of a run (`RUN_DIR/student/`, full weights or a LoRA adapter on its base) as a GGUF
    file, with an Ollama Modelfile beside it. `out` overrides the default RUN_DIR/export/student-<type>.gguf."""
    from sdk.faults import RunLock
    from sdk.models.student import load_student_model, student_kind
    from sdk.store import RunLayout

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if qtype not in TYPES:
        raise ConfigError(f"--type must be one of {', '.join(TYPES)}, got {qtype!r}")
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    if not run_dir.is_dir():
        raise DistilleryError(f"{run_dir} is not a directory")
    if student_kind(layout.student) is None:
        raise ModelError(
            f"{run_dir} has no student to export ({layout.student} holds neither full weights nor a LoRA adapter; "
            f"is the run finished? try `distill resume {run_dir}`)"
        )
    path = Path(out) if out is not None else default_export_path(run_dir, qtype)
    with RunLock(run_dir):  # not while a run is still writing its student
        model, tokenizer = load_student_model(layout.student)
        result = write_gguf(model, tokenizer, path, qtype, name=f"{run_dir.resolve().name} student")
        system = _pack_system_prompt(run_dir, result.notes)
        result.modelfile = write_modelfile(tokenizer, path, system, result.notes)
    return result


def _pack_system_prompt(run_dir: Path, notes: list[str]) -> Optional[str]:
    """The system prompt the student was trained with: the pack named in RUN_DIR/config.yaml, if it resolves."""
    from sdk.store import RunLayout

    if not RunLayout(run_dir).config.is_file():
        notes.append("no config.yaml in the run directory: the Modelfile has no SYSTEM prompt")
        return None
    from sdk.api import load_run_recipe
    from sdk.packs import resolve_pack

    try:
        recipe = load_run_recipe(run_dir)
        return resolve_pack(recipe.domain, recipe.pack_paths).spec.system_prompt if recipe.domain else None
    except DistilleryError as exc:
        notes.append(f"the run's pack could not be read ({exc}): the Modelfile has no SYSTEM prompt")
        return None


# ---------------------------------------------------------------------------------------------
# the GGUF file


def write_gguf(model, tokenizer, path: str | os.PathLike, qtype: str = "f16", name: str = "student") -> ExportResult:
    """Write a LlamaForCausalLM and its tokenizer to `path` as a GGUF file (atomically: a temp file renamed into
    place). The result's notes say what was guessed (empty when nothing was)."""
    import gguf

    from sdk.faults import atomic_section

    if qtype not in TYPES:
        raise ConfigError(f"--type must be one of {', '.join(TYPES)}, got {qtype!r}")
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise ModelError(
            f"only llama-architecture students are exported to GGUF, got model_type {getattr(config, 'model_type', None)!r}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    notes: list[str] = []
    count = 0
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_hyperparameters(writer, config, name, qtype)
        _add_tokenizer(writer, tokenizer, config.vocab_size, notes)
        for gguf_name, data, raw_dtype in _gguf_tensors(model, qtype):
            writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with atomic_section():
            os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(path, path.stat().st_size, qtype, count, notes=notes)


def _rope_theta(config) -> float:
    """rope_theta, from transformers 5's `rope_parameters` or 4.x's attribute; only plain RoPE is exported."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ModelError(f"rope_type {rope_type!r} is not exported to GGUF (only the default RoPE)")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_hyperparameters(writer, config, name: str, qtype: str) -> None:
    import gguf

    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = _head_dim(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:  # llama.cpp assumes hidden/heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def rope_permute(weight, n_head: int):
    """HF -> llama.cpp row order of a q_proj / k_proj weight (n_head * head_dim, hidden).

    HF's rotary embedding rotates the pairs (i, i + head_dim/2) of each head (`rotate_half`); llama.cpp's
    (normal mode, used for llama) rotates the adjacent pairs (2i, 2i + 1). So within each head the rows
    [x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}] are interleaved to [x_0, y_0, x_1, y_1, ...]:
        (n_head, 2, d/2, hidden) -> swap axes 1, 2 -> (n_head, d/2, 2, hidden)
    transformers' GGUF loader applies the inverse when it reads the file back.
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _state_tensors(model) -> dict:
    """The HF tensors to write: the state dict less lm_head when it equals the token embedding (tied)."""
    import torch

    state = dict(model.state_dict())
    head, embed = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
    if head is not None and embed is not None and torch.equal(head, embed):
        del state["lm_head.weight"]  # llama.cpp reuses token_embd as the output layer when `output` is absent
    return state


def _gguf_tensors(model, qtype: str):
    """Yield (gguf name, numpy array, raw ggml type or None) for every tensor, in the state dict's order."""
    import gguf
    import numpy as np
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    for hf_name, tensor in _state_tensors(model).items():
        if hf_name.endswith(".bias"):
            raise ModelError(f"{hf_name}: attention and MLP biases are not exported to GGUF")
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ModelError(f"no GGUF name for tensor {hf_name} of a llama model")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = rope_permute(data, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = rope_permute(data, n_kv)  # k has n_kv heads (grouped-query attention)
        yield (gguf_name, *_encode(np.ascontiguousarray(data), qtype))


def _encode(data, qtype: str):
    """(array, raw ggml type): 1-D tensors (norms) stay f32, 2-D ones become f16 or q8_0. A row whose length is
    not a multiple of q8_0's block (32) falls back to f16, as llama.cpp's converter does."""
    import gguf
    import numpy as np

    if data.ndim <= 1:
        return data.astype(np.float32), None
    q8 = gguf.GGMLQuantizationType.Q8_0
    if qtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q8][0] == 0:
        return gguf.quants.quantize(data, q8), q8
    return data.astype(np.float16), None


# ---------------------------------------------------------------------------------------------
# the tokenizer


def vocab_fingerprint(tokens: list[str], merges: list[str]) -> str:
    """sha256 of the vocabulary (in id order) and the merges: which BPE tokenizer this is."""
    digest = hashlib.sha256()
    digest.update("\n".join(tokens).encode("utf-8"))
    digest.update(b"\0")
    digest.update("\n".join(merges).encode("utf-8"))
    return digest.hexdigest()


def bpe_merges(tokenizer_json: dict) -> list[str]:
    """The merges as llama.cpp stores them: "left right". tokenizers >= 0.20 writes pairs ([left, right]), which
    may hold a literal space; byte-level BPE writes a space as U+0120 ('Ġ'), so that is what it becomes."""
    merges = tokenizer_json.get("model", {}).get("merges") or []
    space = chr(ord(" ") + 256)
    return [m if isinstance(m, str) else " ".join(part.replace(" ", space) for part in m) for m in merges]


def _add_tokenizer(writer, tokenizer, vocab_size: int, notes: list[str]) -> None:
    """tokenizer.ggml.*: llama.cpp's `gpt2` vocabulary (byte-level BPE), with the keys the teacher's GGUF carries."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok_json = json.loads(backend.to_str()) if backend is not None else {}
    model_json = tok_json.get("model", {})
    pre = tok_json.get("pre_tokenizer") or {}
    if model_json.get("type") != "BPE" or "ByteLevel" not in json.dumps(pre):
        raise ModelError("only byte-level BPE tokenizers (llama.cpp's 'gpt2' vocabulary) are exported to GGUF")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ModelError(f"the tokenizer has ids up to {max(by_id)}, beyond the model's vocab_size {vocab_size}")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding matrix is larger than the vocabulary
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = bpe_merges(tok_json)
    fingerprint = vocab_fingerprint(tokens, merges)
    pre_name = KNOWN_PRE_TOKENIZERS.get(fingerprint)
    if pre_name is None:
        pre_name = "default"
        notes.append(
            f"unknown tokenizer (fingerprint {fingerprint[:12]}): tokenizer.ggml.pre is 'default'; "
            "llama.cpp may split text differently from transformers"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    probe = tokenizer("a").input_ids  # does encoding add BOS / EOS around the text?
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id and tokenizer.bos_token_id is not None)
    if probe and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id:
        writer.add_add_eos_token(True)
    pre_steps = pre.get("pretokenizers", [pre])
    writer.add_add_space_prefix(any(p.get("add_prefix_space", False) for p in pre_steps))
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


# ---------------------------------------------------------------------------------------------
# the Ollama Modelfile


def chatml_default_system(tokenizer) -> tuple[bool, Optional[str]]:
    """(is the chat template ChatML, the system prompt it adds when a conversation has none).

    Checked by rendering: a conversation with every role must come out exactly as ChatML does it.
    """
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        return False, None
    probe = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "V"},
    ]
    chatml = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in probe) + "<|im_start|>assistant\n"
    try:
        if tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True) != chatml:
            return False, None
        no_system = tokenizer.apply_chat_template(probe[1:2], tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render our probe is not one we can translate
        return False, None
    prefix = no_system[: no_system.find("<|im_start|>user\n")]
    match = re.fullmatch(r"<\|im_start\|>system\n(.*)<\|im_end\|>\n", prefix, flags=re.DOTALL)
    return True, match.group(1) if match else None


def _go_literal(text: str) -> str:
    """Text that Ollama's Go template prints as it is (a literal `{{` would start an action)."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(default_system: Optional[str]) -> str:
    """ChatML in Ollama's Go-template syntax; like the HF template, a conversation that does not start with a
    system message gets `default_system` (Ollama puts the Modelfile's SYSTEM first, when there is one)."""
    default = ""
    if default_system is not None:
        default = (
            '{{- if and (eq $i 0) (ne $m.Role "system") }}<|im_start|>system\n'
            f"{_go_literal(default_system)}<|im_end|>\n{{{{ end }}}}"
        )
    return (
        "{{- range $i, $m := .Messages }}"
        f"{default}<|im_start|>{{{{ $m.Role }}}}\n"
        "{{ $m.Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    )


def _triple_quoted(text: str) -> str:
    return '"""' + text.replace('"""', "'''") + '"""'


def write_modelfile(tokenizer, gguf_file: Path, system: Optional[str], notes: list[str]) -> Path:
    """An Ollama Modelfile beside the GGUF file: FROM, TEMPLATE, SYSTEM, stop tokens."""
    from sdk.store import atomic_write_text

    is_chatml, default_system = chatml_default_system(tokenizer)
    lines = [f"FROM ./{gguf_file.name}", ""]
    if is_chatml:
        lines += [f"TEMPLATE {_triple_quoted(ollama_template(default_system))}", ""]
    else:
        notes.append("the chat template is not ChatML: the Modelfile has no TEMPLATE (Ollama reads the GGUF's)")
    if system:
        lines += [f"SYSTEM {_triple_quoted(system)}", ""]
    stops = list(CHATML_STOPS) if is_chatml else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    path = gguf_file.parent / "Modelfile"
    atomic_write_text(path, "\n".join(lines).rstrip("\n") + "\n")
    return path
