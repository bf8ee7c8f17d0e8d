"""`distill export --format gguf`: the file loads back in transformers and in llama.cpp with the same logits.

Tolerances, against the float32 original (CPU). "Relative" is the max |logit difference| over every position
of every prompt, divided by the largest |logit|.
  f16    relative < 1e-2. Measured via transformers: 2.3e-3 on the tiny model (max |diff| 0.020), 1.4e-3 on
         SmolLM2 pruned to 24 layers (0.043). Via llama.cpp's own loader and kernels, last position: 2.5e-3
         (tiny), 2.6e-3 (pruned SmolLM2), the same next token on every prompt.
  q8_0   tiny random model: top-1 agreement >= 80% over every position (measured 89%; a random model's top
         two logits are ~0.2 nats apart, so 8-bit weights flip some). SmolLM2-135M-Instruct (slow test): 8-token
         greedy continuations of 20 prompts, 80% identical and 96% of tokens in transformers, 65% and 95% in
         llama.cpp (its q8_0 kernels also round the activations to 8 bits); every token that differs is a
         near-tie of the original (top-2 margin <= 0.13 nats measured, < 0.5 asserted). Asserted: >= 90% of
         tokens and >= 60% of continuations identical.
"""

from __future__ import annotations

import functools
import subprocess

import numpy as np
import pytest

from sdk.errors import ModelError
from tests.conftest import distill_cmd

PROMPTS = [
    "The capital of France is",
    "Hypertension is a condition in which",
    "Water boils at",
    "The three branches of government are",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The mitochondria is the powerhouse of",
    "In 1492, Columbus",
    "To make a cup of tea, first",
    "The derivative of x squared is",
    "Photosynthesis converts sunlight into",
    "A contract is legally binding when",
    "The stock market fell because",
    "Antibiotics do not work against viruses because",
    "My favourite colour is",
    "12 + 30 =",
    "The quick brown fox",
    "<|im_start|>user\nWhat is a fever?<|im_end|>\n<|im_start|>assistant\n",
    "Paris, London and Berlin are all",
    "Sepsis is",
]
F16_REL_TOL = 1e-2  # max |diff| / max |logit|
Q8_LLAMA_CPP_REL_TOL = 5e-2  # llama.cpp's q8_0 kernels also round the activations to 8 bits


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine two spinning threads are 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from sdk.models.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


def tiny_llama(path, tokenizer, tie: bool = True, seed: int = 0):
    """A random Llama with grouped-query attention (4 query heads, 2 kv heads) and SmolLM2's real vocabulary.

    tests/train_helpers.tiny_model_dir has no GQA, so this one is built here. initializer_range 0.2 (not 0.02)
    gives logits a spread of several nats, so a greedy token is a real choice, not a coin toss between ties.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def fake_run(root, model, tokenizer):
    """A run directory holding only student/ (full weights)."""
    student = root / "student"
    model.save_pretrained(student)
    tokenizer.save_pretrained(student)
    return root


def logits_of(model, tokenizer, prompts=PROMPTS) -> list:
    """Per prompt, the (T, vocab) logits, each prompt run alone (no padding)."""
    import torch

    out = []
    with torch.inference_mode():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            out.append(model(ids).logits[0].float())
    return out


def seq_logits(model, token_ids: list[list[int]]) -> list:
    """Per sequence of token ids, the (T, vocab) logits."""
    import torch

    with torch.inference_mode():
        return [model(torch.tensor([ids])).logits[0].float() for ids in token_ids]


def max_rel_diff(a: list, b: list) -> tuple[float, float]:
    """(max |a - b|, that divided by max |a|) over every position of every prompt."""
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    scale = max(float(x.abs().max()) for x in a)
    return diff, diff / scale


def greedy(model, tokenizer, n: int = 8) -> list[list[int]]:
    import torch

    out = []
    with torch.inference_mode():
        for text in PROMPTS:
            ids = tokenizer(text, return_tensors="pt").input_ids
            gen = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out.append(gen[0, ids.shape[1] :].tolist())
    return out


@functools.cache
def load_gguf(path):
    """transformers' own GGUF loader (it dequantises, and un-permutes q/k); ~5 s of metadata parsing, so cached."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """The tiny student, exported once as f16 and once as q8_0 through the run-directory entry point."""
    from sdk.export import export_run

    root = tmp_path_factory.mktemp("tiny_run")
    model = tiny_llama(root / "src", tokenizer)
    fake_run(root / "run", model, tokenizer)
    f16 = export_run(root / "run", qtype="f16")
    q8 = export_run(root / "run", qtype="q8_0")
    return model, f16, q8


# ---------------------------------------------------------------------------------------------
# 1. transformers reads the file back


def test_f16_logits_match_the_original(tiny, tokenizer):
    model, f16, _ = tiny
    assert f16.path == f16.path.parent.parent / "export" / "student-f16.gguf" and f16.path.is_file()
    assert f16.notes == [] or all("SYSTEM" in n for n in f16.notes)  # the tokenizer was recognised
    diff, rel = max_rel_diff(logits_of(model, tokenizer), logits_of(load_gguf(f16.path), tokenizer))
    print(f"f16: max |logit diff| {diff:.4g}, relative {rel:.3g}")
    assert rel < F16_REL_TOL


def test_q8_0_top1_mostly_matches(tiny, tokenizer):
    """The greedy continuations of a real model are checked in the slow test below; a random model's top two
    logits are too close for that."""
    import torch

    model, f16, q8 = tiny
    assert q8.size_bytes < 0.7 * f16.size_bytes
    want, got = logits_of(model, tokenizer), logits_of(load_gguf(q8.path), tokenizer)
    same = torch.cat([(a.argmax(-1) == b.argmax(-1)).float() for a, b in zip(want, got)]).mean().item()
    print(
        f"q8_0 (tiny): top-1 agreement {same:.1%} over every position; relative diff {max_rel_diff(want, got)[1]:.3g}"
    )
    assert same >= 0.8


# ---------------------------------------------------------------------------------------------
# 2. the file is what llama.cpp expects for a llama model


def expected_llama_tensors(n_layers: int, tied: bool) -> set[str]:
    """llama.cpp's names for a llama model without biases, from gguf's own tables (not from sdk.export)."""
    import gguf

    T = gguf.MODEL_TENSOR
    per_block = [T.ATTN_NORM, T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT, T.FFN_NORM, T.FFN_GATE, T.FFN_UP, T.FFN_DOWN]
    top = [T.TOKEN_EMBD, T.OUTPUT_NORM] + ([] if tied else [T.OUTPUT])
    allowed = set(gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA])
    assert set(per_block + top) <= allowed
    names = {gguf.TENSOR_NAMES[t] + ".weight" for t in top}
    return names | {gguf.TENSOR_NAMES[t].format(bid=i) + ".weight" for t in per_block for i in range(n_layers)}


def fields(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.fixture(scope="module")
def teacher_fields() -> dict:
    """The metadata llama.cpp's converter wrote into the embedded teacher's GGUF (the same model family)."""
    from sdk.models.embedded import gguf_path

    return fields(gguf_path())


@pytest.mark.parametrize("which", ["f16", "q8_0"])
def test_tensor_names_shapes_types_and_metadata(tiny, tokenizer, teacher_fields, which):
    import gguf

    model, f16, q8 = tiny
    result = f16 if which == "f16" else q8
    cfg = model.config
    reader = gguf.GGUFReader(str(result.path))
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected_llama_tensors(cfg.num_hidden_layers, tied=True)
    assert result.tensors == len(tensors)

    h, ff, v, hd = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.hidden_size // cfg.num_attention_heads
    shapes = {  # GGUF order: the row length first
        "token_embd": [h, v],
        "attn_q": [h, cfg.num_attention_heads * hd],
        "attn_k": [h, cfg.num_key_value_heads * hd],
        "attn_v": [h, cfg.num_key_value_heads * hd],
        "attn_output": [h, h],
        "ffn_gate": [h, ff],
        "ffn_up": [h, ff],
        "ffn_down": [ff, h],
        "attn_norm": [h],
        "ffn_norm": [h],
        "output_norm": [h],
    }
    big = gguf.GGMLQuantizationType.F16 if which == "f16" else gguf.GGMLQuantizationType.Q8_0
    for name, t in tensors.items():
        kind = name.split(".")[-2]
        assert list(t.shape) == shapes[kind], name
        assert t.tensor_type == (gguf.GGMLQuantizationType.F32 if len(shapes[kind]) == 1 else big), name

    meta = fields(result.path)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if which == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == file_type
    assert meta["general.name"]
    expect = {
        "llama.context_length": cfg.max_position_embeddings,
        "llama.embedding_length": h,
        "llama.block_count": cfg.num_hidden_layers,
        "llama.feed_forward_length": ff,
        "llama.attention.head_count": cfg.num_attention_heads,
        "llama.attention.head_count_kv": cfg.num_key_value_heads,
        "llama.vocab_size": v,
        "llama.rope.dimension_count": hd,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.bos_token_id": tokenizer.bos_token_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_token_id,
        "tokenizer.chat_template": tokenizer.chat_template,
    }
    assert {k: meta.get(k) for k in expect} == expect
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)

    # the tokenizer is the one llama.cpp itself wrote into the embedded teacher's GGUF, key for key
    teacher = teacher_fields
    teacher_keys = {k for k in teacher if k.startswith(("tokenizer.", "llama.", "general.architecture"))}
    assert teacher_keys <= set(meta)
    for key in (
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.chat_template",
    ):
        assert meta[key] == teacher[key], key


def test_untied_output_is_written(tmp_path, tokenizer):
    """A student whose lm_head is its own matrix gets llama.cpp's `output` tensor, and llama.cpp uses it."""
    import gguf

    from sdk.export import write_gguf

    model = tiny_llama(tmp_path / "src", tokenizer, tie=False)
    result = write_gguf(model, tokenizer, tmp_path / "untied.gguf")
    names = {t.name for t in gguf.GGUFReader(str(result.path)).tensors}
    assert names == expected_llama_tensors(model.config.num_hidden_layers, tied=False)
    ids = [tokenizer(text).input_ids for text in PROMPTS[:5]]
    agree, rel = compare_last(logits_of(model, tokenizer, PROMPTS[:5]), llama_cpp_logits(result.path, ids))
    assert agree == 5 and rel < F16_REL_TOL


def test_modelfile_translates_the_chatml_template(tiny, tokenizer):
    _, f16, _ = tiny
    text = f16.modelfile.read_text()
    assert f16.modelfile == f16.path.parent / "Modelfile"
    assert text.startswith("FROM ./student-f16.gguf\n") or text.startswith("FROM ./student-q8_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text and "SYSTEM" not in text  # the fake run has no config.yaml
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    assert "{{- range $i, $m := .Messages }}" in template and template.endswith("<|im_start|>assistant\n")
    # the HF template's own default system prompt, used when a conversation brings none
    default = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).split("<|im_end|>")[0]
    assert default.removeprefix("<|im_start|>system\n") in template


def test_modelfile_carries_the_packs_system_prompt(tmp_path, tokenizer, tiny_packs):
    import yaml

    from sdk.export import _pack_system_prompt, write_modelfile
    from sdk.packs import resolve_pack

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"domain": "tiny", "pack_paths": [str(tiny_packs)]}))
    notes: list[str] = []
    system = _pack_system_prompt(run, notes)
    assert system == resolve_pack("tiny", [tiny_packs]).spec.system_prompt and notes == []
    text = write_modelfile(tokenizer, run / "student.gguf", system, notes).read_text()
    assert f'SYSTEM """{system}"""' in text


# ---------------------------------------------------------------------------------------------
# 3. llama.cpp itself loads the file


def llama_cpp_logits(path, token_ids: list[list[int]]) -> list:
    """llama.cpp's (T, vocab) logits for each sequence of token ids, read with llama.cpp's own loader."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    try:
        out = []
        for ids in token_ids:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)]))
        return out
    finally:
        llm.close()


def llama_cpp_tokenize(path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's tokenizer, built from the file's tokenizer.ggml.* metadata alone."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(text.encode(), add_bos=False, special=True) for text in texts]
    finally:
        llm.close()


def compare_last(reference: list, got: list) -> tuple[int, float]:
    """(how many sequences have the same next token, max |logit diff| / max |logit|) at the last position."""
    agree = sum(int(g[-1].argmax()) == int(r[-1].argmax()) for r, g in zip(reference, got))
    diff = max(float(np.abs(np.asarray(g[-1]) - r[-1].numpy()).max()) for r, g in zip(reference, got))
    return agree, diff / max(float(r[-1].abs().max()) for r in reference)


def test_llama_cpp_loads_the_files_and_agrees(tiny, tokenizer):
    """llama.cpp (llama-cpp-python) reads the files with its own loader, tokenizer and q8_0 dequantiser."""
    model, f16, q8 = tiny
    ids = [tokenizer(text).input_ids for text in PROMPTS]
    assert llama_cpp_tokenize(f16.path, PROMPTS) == ids
    agree, rel = compare_last(logits_of(model, tokenizer), llama_cpp_logits(f16.path, ids))
    print(f"llama.cpp f16 (tiny): next token agrees on {agree}/{len(PROMPTS)}; max relative logit diff {rel:.3g}")
    assert agree >= len(PROMPTS) - 1 and rel < F16_REL_TOL
    # q8_0: llama.cpp's C dequantiser and transformers' (the gguf package's) read the same blocks the same way
    agree, rel = compare_last(logits_of(load_gguf(q8.path), tokenizer), llama_cpp_logits(q8.path, ids))
    print(f"llama.cpp q8_0 vs transformers q8_0: {agree}/{len(PROMPTS)}; max relative logit diff {rel:.3g}")
    assert agree >= len(PROMPTS) - 1 and rel < Q8_LLAMA_CPP_REL_TOL


# ---------------------------------------------------------------------------------------------
# 4. the default student (the embedded teacher pruned to 24 layers), and q8_0 on a trained model


@pytest.mark.slow
def test_pruned_teacher_f16_matches_in_transformers_and_llama_cpp(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from sdk.export import export_run
    from sdk.models.embedded import embedded_model_dir
    from sdk.models.prune import prune_layers

    model = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir())).eval()
    prune_layers(model, [i for i in range(30) if not 20 <= i < 26])  # angular pruning's usual cut: a block of 6
    fake_run(tmp_path / "run", model, tokenizer)
    f16 = export_run(tmp_path / "run", qtype="f16")
    assert f16.notes == [] or all("SYSTEM" in n for n in f16.notes)
    want = logits_of(model, tokenizer, PROMPTS[:10])
    diff, rel = max_rel_diff(want, logits_of(load_gguf(f16.path), tokenizer, PROMPTS[:10]))
    print(f"pruned SmolLM2 f16 ({f16.size_bytes / 1e6:.0f} MB): max |logit diff| {diff:.4g}, relative {rel:.3g}")
    assert rel < F16_REL_TOL

    ids = [tokenizer(text).input_ids for text in PROMPTS[:10]]
    agree, rel = compare_last(want, llama_cpp_logits(f16.path, ids))
    print(f"llama.cpp f16 (pruned SmolLM2): next token agrees on {agree}/10; relative diff {rel:.3g}")
    assert agree >= 9 and rel < F16_REL_TOL


def follows_greedy_path(paths: list[list[int]], prompt_lengths: list[int], reference: list, got: list):
    """Along each reference greedy path (a prompt and the tokens the original generated after it), does `got`
    pick the same next token?

    Returns (per path, one boolean per generated token; the original's top-2 margin in nats at each
    disagreement). A path that agrees everywhere is one `got` would also generate greedily.
    """
    agree, margins = [], []
    for path, start, ref, out in zip(paths, prompt_lengths, reference, got):
        ref, out = np.asarray(ref), np.asarray(out)
        row = []
        for t in range(start - 1, len(path) - 1):  # position t predicts token t + 1
            row.append(int(out[t].argmax()) == path[t + 1])
            if not row[-1]:
                top2 = np.sort(ref[t])[-2:]
                margins.append(float(top2[1] - top2[0]))
        agree.append(row)
    return agree, margins


@pytest.mark.slow
def test_teacher_q8_0_greedy_continuations_match(tmp_path, tokenizer):
    """q8_0 on a trained model (SmolLM2-135M-Instruct; a healed student approximates it): the same greedy text,
    except where the original itself is torn between two tokens."""
    from transformers import AutoModelForCausalLM

    from sdk.export import export_run
    from sdk.models.embedded import embedded_model_dir

    model = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir())).eval()
    fake_run(tmp_path / "run", model, tokenizer)
    q8 = export_run(tmp_path / "run", qtype="q8_0")
    prompts = [tokenizer(text).input_ids for text in PROMPTS]
    paths = [ids + cont for ids, cont in zip(prompts, greedy(model, tokenizer, 8))]
    reference = seq_logits(model, paths)
    for runtime, got in (
        ("transformers", seq_logits(load_gguf(q8.path), paths)),
        ("llama.cpp", llama_cpp_logits(q8.path, paths)),
    ):
        agree, margins = follows_greedy_path(paths, [len(p) for p in prompts], reference, got)
        tokens = float(np.mean([a for row in agree for a in row]))
        same = float(np.mean([all(row) for row in agree]))
        print(
            f"q8_0 in {runtime}: {same:.0%} of {len(PROMPTS)} greedy continuations identical, {tokens:.1%} of tokens;"
            f" the original's top-2 margin where they differ: {', '.join(f'{m:.2f}' for m in margins) or '-'} nats"
        )
        assert tokens >= 0.9 and same >= 0.6
        assert all(m < 0.5 for m in margins)  # only near-ties flip


# ---------------------------------------------------------------------------------------------
# 5. a LoRA adapter student is merged on export


def test_lora_adapter_student_exports_the_merged_model(tmp_path, tokenizer):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sdk.export import export_run
    from sdk.models.student import student_kind
    from sdk.train.common import save_student

    base = tiny_llama(tmp_path / "base_src", tokenizer)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "base_src")),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero: make the adapter change something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    student = save_student(peft_model, tokenizer, tmp_path / "run" / "student", base=base, merge=False)
    assert student_kind(student) == "adapter"
    merged = peft_model.merge_and_unload().eval()

    result = export_run(tmp_path / "run", qtype="f16")
    exported = logits_of(load_gguf(result.path), tokenizer, PROMPTS[:5])
    _, rel_merged = max_rel_diff(logits_of(merged, tokenizer, PROMPTS[:5]), exported)
    _, rel_base = max_rel_diff(logits_of(base, tokenizer, PROMPTS[:5]), exported)
    assert rel_merged < F16_REL_TOL < rel_base


def test_write_gguf_refuses_a_non_llama_model(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from sdk.export import write_gguf

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ModelError, match="llama"):
        write_gguf(gpt2, tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------------------------------------
# 6. the command


def test_cli_exports_and_prints_the_path(tmp_path, tokenizer):
    model = tiny_llama(tmp_path / "src", tokenizer)
    run = fake_run(tmp_path / "run", model, tokenizer)
    out = tmp_path / "elsewhere" / "mine.gguf"
    proc = subprocess.run(
        distill_cmd() + ["export", str(run), "--format", "gguf", "--type", "q8_0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(out) in proc.stdout and "MB" in proc.stdout
    assert out.is_file() and (out.parent / "Modelfile").is_file()
    assert not list(out.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "args, message",
    [(["--type", "q8_0"], "has no student"), (["--type", "q4_k"], "--type must be one of f16, q8_0")],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "run").mkdir()
    proc = subprocess.run(
        distill_cmd() + ["export", str(tmp_path / "run"), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in proc.stderr + proc.stdout
