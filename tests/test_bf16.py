"""bf16 autocast: `train.bf16` resolves as documented, and SFT under bf16 autocast tracks fp32.

The tracking test trains the same tiny model on the same rows with the same seed twice, bf16 off and on,
and compares the logged loss curves. It runs on every machine: a CPU without native bf16 (no AVX512-BF16
or AMX) still runs bf16 autocast, just without the speed-up, and on this tiny model both runs take seconds.
"""

from pathlib import Path

import pytest
import torch

from sdk.train import common
from sdk.train.common import TrainRequest, device_kwargs, use_bf16
from sdk.train.runner import train_student
from tests.train_helpers import SYSTEM, tiny_model_dir, tiny_recipe, write_iteration

# Measured on a 2-core AMD EPYC with avx512_bf16 (torch 2.13), 20 steps at lr 1e-2, loss 10.82 -> 6.35:
# the largest relative difference between the two logged curves was 0.15% (0.12% at the last step), and
# 0.15% (0.13%) with oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2: bf16 without native instructions,
# where the bf16 run took 5.7 s against 2.9 s). bf16 keeps 8 bits of mantissa, a relative rounding step of
# 2^-8 = 0.39% per value, and the gap stays below that over 20 steps; the bound is 1%, about 7x the
# measured gap, to leave room for other CPUs' kernels and summation orders while still failing a run
# whose curve departs from fp32's by more than rounding explains.
MAX_RELATIVE_GAP = 0.01
STEPS = 20


@pytest.mark.parametrize(
    "setting, cuda, cuda_bf16, native_cpu, expected",
    [
        ("on", False, False, False, True),
        ("off", True, True, True, False),
        ("auto", True, True, False, True),  # a GPU with bf16
        ("auto", True, False, True, False),  # a GPU without bf16 (e.g. V100): the CPU's flags do not matter
        ("auto", False, False, True, True),  # a CPU with AVX512-BF16 or AMX
        ("auto", False, False, False, False),  # a CPU without: autocast would emulate bf16, slower than fp32
    ],
)
def test_use_bf16_resolves_auto_on_off(monkeypatch, setting, cuda, cuda_bf16, native_cpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native_cpu)
    assert use_bf16(setting) is expected


def test_cpu_deepspeed_runs_fp32(monkeypatch):
    """DeepSpeed on a CPU (DS_ACCELERATOR=cpu) runs fp32, so bf16 is not asked of the trainer there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_kwargs("on", None)["bf16"] is True
    assert device_kwargs("on", "zero3")["bf16"] is False
    assert device_kwargs("off", None)["bf16"] is False


def test_cpu_has_native_bf16_reads_the_cpu_flags():
    """Only the bf16 matrix flags count (avx512f alone, or avx512_vnni, gives no bf16 speed-up)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.is_file() else []
    assert common.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads wait on each other
    (a step of this test's model took 1.0 s on two threads against 0.05 s on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sft_losses(student, tmp_path, bf16: str) -> tuple[list[float], set]:
    """The logged SFT losses of STEPS steps, and the dtypes the student's Linear layers produced while training."""
    dtypes = set()

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            dtypes.add(output.dtype)

    it = write_iteration(tmp_path / f"iter-{bf16}")
    recipe = tiny_recipe(student, student, max_steps=STEPS, save_steps=STEPS, learning_rate=1e-2, bf16=bf16)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = train_student(TrainRequest.in_folder(recipe, it, tmp_path / f"student-{bf16}", None, SYSTEM))
    finally:
        handle.remove()
    return [h["loss"] for h in metrics["stages"]["sft"]["loss_history"]], dtypes


def test_bf16_autocast_tracks_fp32(tmp_path, one_thread):
    student = tiny_model_dir(tmp_path / "tiny", layers=2, seed=0)
    fp32, fp32_dtypes = sft_losses(student, tmp_path, "off")
    bf16, bf16_dtypes = sft_losses(student, tmp_path, "on")

    # the two runs really differ in precision: autocast made the matmuls bf16 in one and only there
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}
    assert len(fp32) == len(bf16) == STEPS  # logging_steps 1
    # the run learns, so the curves are compared over a real descent (about 10.8 -> 6.4 nats), not a plateau
    assert fp32[-1] < fp32[0] - 3
    gaps = [abs(b - f) / f for f, b in zip(fp32, bf16)]
    assert max(gaps) < MAX_RELATIVE_GAP, [f"{f:.4f}/{b:.4f}" for f, b in zip(fp32, bf16)]
    assert bf16[-1] == pytest.approx(fp32[-1], rel=MAX_RELATIVE_GAP)


@pytest.mark.parametrize("native_cpu", [True, False])
def test_cpu_generation_uses_a_bf16_copy_of_the_weights_and_scores_answers_with_it(tmp_path, monkeypatch, native_cpu):
    """generation.bf16 auto on a CPU with native bf16: the answers come from a bf16 copy of the weights (the
    same greedy text as generating from the model cast to bf16 by hand), and so do the answers' log-likelihoods
    (close to float32's); the float32 model is left as it was for the fidelity figures, and the response-cache
    key says which precision answered. Without native bf16: float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdk.config import GenerationSettings
    from sdk.models.local import LocalChatModel

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native_cpu)
    folder = tiny_model_dir(tmp_path / "tiny", hidden=64)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    chat = LocalChatModel(model, tok, "tiny", settings)
    convs = [[{"role": "user", "content": q}] for q in ("What is a fever?", "Name a sign of sepsis.")]
    answers = chat.generate(convs)

    generator = chat.generation_model(settings)
    assert (generator is not model) is native_cpu
    assert next(generator.parameters()).dtype == (torch.bfloat16 if native_cpu else torch.float32)
    assert next(model.parameters()).dtype == torch.float32  # the scoring model is untouched
    assert chat.cache_params(settings)["precision"] == ("bf16" if native_cpu else "fp32")

    reference = AutoModelForCausalLM.from_pretrained(folder)
    if native_cpu:
        reference = reference.to(torch.bfloat16)
    by_hand = LocalChatModel(reference, tok, "by hand", settings.model_copy(update={"bf16": "off"}))
    assert answers == by_hand.generate(convs)

    # answers are scored by the model that generates: the figures of the model cast by hand, near float32's
    texts = ["A raised body temperature.", "Low blood pressure"]
    scored = chat.loglik(convs, texts)
    assert scored == by_hand.loglik(convs, texts)
    fp32 = LocalChatModel(
        AutoModelForCausalLM.from_pretrained(folder), tok, "fp32", settings.model_copy(update={"bf16": "off"})
    )
    assert scored == pytest.approx(fp32.loglik(convs, texts), abs=0.05)
    assert (scored != fp32.loglik(convs, texts)) is native_cpu
