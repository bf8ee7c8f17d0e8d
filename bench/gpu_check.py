#!/usr/bin/env python3
"""One self-contained check of the SDK's GPU path: every training objective, the launched jobs, scoring, bf16 speed.

    python3 bench/gpu_check.py                      # every part, on CUDA when there is one, else on the CPU
    python3 bench/gpu_check.py --device cpu         # the CPU dry run (tiny models, one thread, one part at a time)
    python3 bench/gpu_check.py --parts sft,scoring  # some parts only
    python3 bench/gpu_check.py --out DIR            # also write DIR/gpu_check.json and DIR/gpu_check.log ($OUT if set)

Made for a borrowed GPU machine with no network: torch there, the packages it lacks carried as wheels in .whl/
(installed with `pip install --target /tmp/site .whl/*.whl`, PYTHONPATH=/tmp/site), and two small assets in
.whl/assets/: the embedded SmolLM2's tokenizer (tokenizer/) and its config.json (smollm2-135m/), so no part needs
the embedded model's GGUF or a hub.

Preparing .whl/ on a machine with the project's venv (it is gitignored; about 24 MB):
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        transformers==5.24.0 trl==1.16.0 datasets==5.2.0 peft==0.21.2 pydantic==2.14.4 pydantic-core==2.50.5 \
        dill==0.4.1 multiprocess==0.70.19 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing-extensions==4.16.0 hjson==3.1.0
    DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl   # sdist only on PyPI
    python -c "from sdk.models.embedded import embedded_model_dir as d; from transformers import AutoTokenizer; \
        AutoTokenizer.from_pretrained(d()).save_pretrained('.whl/assets/tokenizer')"
    mkdir -p .whl/assets/smollm2-135m && cp "$(python -c 'from sdk.models.embedded import embedded_model_dir as d; \
        print(d())')/config.json" .whl/assets/smollm2-135m/
Pin the versions the project's venv holds; the device's own torch stays.

Parts (each its own process, with a timeout; a failure is reported with its error and the check goes on):
  env          versions and the file each package was imported from, the GPU, DeepSpeed's accelerator
  sft, kd_online, kd_store, dpo, rlaif
               one objective each through train_student (train.launcher local, train.bf16 auto) on the tiny
               Llama pair of tests/train_helpers.py, 3 steps: finished or the error, last logged loss (finite?),
               bf16 on (the dtype the student's Linear layers produced while training: what autocast really did,
               and the trainer's args.bf16), the device it trained on, seconds. kd_store fills the teacher
               logit store with fill_from_local_teacher first (the label stage's path)
  scoring      LocalChatModel.loglik and fidelity() (KL, top-1, perplexities) of a tiny teacher/student pair on
               the device, against the same figures on the CPU in float32 in the same process; greedy generate
  throughput   (runs alone, right after env) one SFT-style step (forward with labels, backward, AdamW) of a random
               model of SmolLM2-135M's config at batch 8 x 512 tokens: fp32, tf32 and bf16 autocast, ms/step and ratios
               (on a CPU a reduced 1 x 64 shape only checks that it runs)
  launch_ds_zero2, launch_ds_zero3, launch_accelerate
               the `student` stage's heal (a pruned 6 -> 4 layer teacher copy, 3 steps) and a training job
               (stages [sft, kd]) under train.launcher deepspeed with ZeRO-2 / ZeRO-3, and accelerate with
               configs/accelerate/zero3.yaml; 1 process, as tests/test_train_launch.py does with 2 on the CPU.
               A probe (a sitecustomize on the launched workers' path, active only in these jobs) records the
               dtype and device of the Linear outputs in the workers.

At the end: a summary table, and which imported modules the device lacks and the wheel that carries each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
ASSETS = WHEELS / "assets"
PROBE_ENV = "GPU_CHECK_PROBE_DIR"
THREADS_ENV = "GPU_CHECK_THREADS"

# (cpu timeout s, cuda timeout s, exclusive: runs alone, not beside other parts)
PARTS = {
    "env": (300, 90, False),
    "throughput": (600, 180, True),
    "sft": (600, 150, False),
    "kd_online": (600, 150, False),
    "kd_store": (600, 150, False),
    "dpo": (600, 150, False),
    "rlaif": (600, 150, False),
    "scoring": (600, 150, False),
    "launch_ds_zero2": (900, 300, False),
    "launch_ds_zero3": (900, 300, False),
    "launch_accelerate": (900, 300, False),
}
LAZY_EXTRAS = ("llama_index", "faiss", "openai", "lm_eval", "sentence_transformers", "gguf")  # not for training
LAUNCH_PORTS = {"launch_ds_zero2": 29611, "launch_ds_zero3": 29622, "launch_accelerate": 29633}

# KINDS.md, "Python packages already there" for nvidia-h200 (2026-11-17): what the device's python3 holds
DEVICE_PACKAGES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader
lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()

# Written into the launched jobs' PYTHONPATH: inert unless GPU_CHECK_PROBE_DIR is set (only the launch parts set it).
SITECUSTOMIZE = """
import os as _os
if _os.environ.get("GPU_CHECK_PROBE_DIR"):
    try:
        import atexit as _atexit, collections as _collections, json as _json, sys as _sys
        import torch as _torch

        _seen = _collections.Counter()

        def _gpu_check_hook(module, args, output):
            if module.training and isinstance(module, _torch.nn.Linear) and isinstance(output, _torch.Tensor):
                _seen[str(output.dtype).replace("torch.", "") + "@" + str(output.device)] += 1

        _torch.nn.modules.module.register_module_forward_hook(_gpu_check_hook)

        def _gpu_check_dump():
            record = {
                "pid": _os.getpid(),
                "rank": _os.environ.get("RANK"),
                "argv": list(_sys.argv),
                "linear_outputs": dict(_seen),
                "modules": sorted({m.split(".")[0] for m in list(_sys.modules)}),
            }
            path = _os.path.join(_os.environ["GPU_CHECK_PROBE_DIR"], "probe-%d.json" % _os.getpid())
            with open(path, "w") as fh:
                _json.dump(record, fh)

        _atexit.register(_gpu_check_dump)
    except Exception as _exc:  # a probe must never break the job it watches
        print("gpu_check probe not installed:", _exc, file=_sys.stderr)
"""


# ==========================================================================================================
# helpers used inside a part's process


def _tail(text: str, lines: int = 8, width: int = 220) -> list[str]:
    return [line[:width] for line in text.strip().splitlines()[-lines:]]


def _error_row(exc: BaseException) -> dict:
    return {
        "status": "fail",
        "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}",
        "trace": _tail(traceback.format_exc(), 10),
    }


class Results:
    """The rows of one part, rewritten to its result file after each item (a killed part keeps the finished ones)."""

    def __init__(self, part: str, path: Path):
        self.part, self.path, self.rows = part, path, []

    def run(self, item: str, fn, *args, **kwargs) -> dict:
        print(f"\n===== {self.part} / {item} =====", flush=True)
        start = time.perf_counter()
        try:
            row = {"status": "ok", **(fn(*args, **kwargs) or {})}
        except BaseException as exc:  # noqa: BLE001 - every failure is a result
            traceback.print_exc()
            row = _error_row(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
        row = {"part": self.part, "item": item, **row, "seconds": round(time.perf_counter() - start, 1)}
        self.rows.append(row)
        self.write()
        print(f"===== {self.part} / {item}: {row['status']} in {row['seconds']} s", flush=True)
        return row

    def write(self, extra: dict | None = None) -> None:
        data = {"rows": self.rows, **(extra or {})}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, default=str))
        tmp.replace(self.path)


def _setup_child(work: Path) -> None:
    for path in (str(ROOT),):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ["DISTILLERY_CACHE"] = str(work / "cache")  # the heal's student cache; never the user's
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf_datasets")
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSETS / "tokenizer"))


def _tiny_pair(root: Path, peaky: bool = False) -> tuple[Path, Path]:
    """tests/train_helpers.py's pair: a 2-layer student (seed 0) and a 3-layer teacher (seed 1), SmolLM2's tokenizer.
    peaky: the teacher's final norm scaled by 40, as tests/test_logit_store.py does, so its top-k holds real mass."""
    from tests.train_helpers import tiny_model_dir

    tok = _tokenizer()
    student = tiny_model_dir(root / "student", layers=2, seed=0, tokenizer=tok)
    teacher = tiny_model_dir(root / "teacher", layers=3, seed=1, tokenizer=tok)
    if peaky:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(teacher)
        with torch.no_grad():
            model.model.norm.weight.mul_(40.0)
        model.save_pretrained(teacher)
    return student, teacher


def _ok_rows(iter_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (iter_dir / "teacher.jsonl").read_text().splitlines()) if r["status"] == "ok"]


def _saved_dtypes(folder: Path) -> str | None:
    """The tensor dtypes in a saved model's safetensors (read from the header, no torch)."""
    counts: dict[str, int] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                counts[meta["dtype"]] = counts.get(meta["dtype"], 0) + 1
    config = Path(folder) / "config.json"
    recorded = json.loads(config.read_text()).get("dtype") if config.is_file() else None
    return (",".join(f"{k}x{v}" for k, v in sorted(counts.items())) + f" cfg {recorded}") if counts else None


def _bf16_summary(linear_outputs: dict) -> tuple[str, str]:
    """('on 100%' / 'off' / 'mixed 63%', devices) from {dtype@device: count} of the student's training Linear outputs."""
    total = sum(linear_outputs.values())
    if not total:
        return "no data", "?"
    bf16 = sum(n for k, n in linear_outputs.items() if k.startswith("bfloat16@"))
    devices = ",".join(sorted({k.split("@", 1)[1] for k in linear_outputs}))
    share = bf16 / total
    label = "on" if share == 1.0 else "off" if share == 0.0 else f"mixed {share:.0%}"
    return label, devices


class TrainProbe:
    """In a part's own process: the dtype/device of the student's Linear outputs while training (module.training),
    and what each trainer started with (args.bf16, args.device, the parameters' device and dtype), recorded by a
    callback added next to the SDK's own in sdk.train.common.run_trainer."""

    def __init__(self):
        self.linear: dict[str, int] = {}
        self.trainers: list[dict] = []

    def __enter__(self):
        import torch

        from sdk.train import common

        def hook(module, args, output):
            if module.training and isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
                key = f"{str(output.dtype).replace('torch.', '')}@{output.device}"
                self.linear[key] = self.linear.get(key, 0) + 1

        self._handle = torch.nn.modules.module.register_module_forward_hook(hook)
        self._common, self._original = common, common.skip_final_checkpoint_callback
        probe, original = self, common.skip_final_checkpoint_callback

        def patched():
            base = original()

            class Recorded(type(base)):
                def on_train_begin(self, args, state, control, model=None, **kwargs):
                    p = next(model.parameters()) if model is not None else None
                    probe.trainers.append(
                        {
                            "args_bf16": bool(args.bf16),
                            "args_device": str(args.device),
                            "param_device": str(p.device) if p is not None else None,
                            "param_dtype": str(p.dtype).replace("torch.", "") if p is not None else None,
                        }
                    )
                    return control

            return Recorded()

        common.skip_final_checkpoint_callback = patched
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self._common.skip_final_checkpoint_callback = self._original
        return False

    def fields(self) -> dict:
        bf16, devices = _bf16_summary(self.linear)
        t = self.trainers[0] if self.trainers else {}
        return {
            "bf16": f"{bf16} (args {'T' if t.get('args_bf16') else 'F' if t else '?'})",
            "device": devices if devices != "?" else t.get("param_device", "?"),
            "linear_outputs": self.linear,
            "trainers": self.trainers,
        }


def _stage_fields(m: dict) -> dict:
    losses = [h["loss"] for h in m.get("loss_history", [])]
    return {
        "loss": m.get("last_logged_loss"),
        "first_loss": m.get("first_logged_loss"),
        "finite": bool(losses) and all(math.isfinite(x) for x in losses),
        "steps": m.get("steps"),
        "processes": m.get("processes"),
        "zero": m.get("deepspeed_zero_stage"),
    }


# ==========================================================================================================
# parts


def _check_wheel_requirements() -> list[str]:
    """Each carried wheel's installed requirements (extras aside) against the versions this python imports."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    unmet = []
    for dist in sorted({_wheel_dist(p) for p in WHEELS.glob("*.whl")}):
        try:
            requires = md.distribution(dist).requires or []
        except md.PackageNotFoundError:
            unmet.append(f"{dist}: not installed")
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                unmet.append(f"{dist} needs {req} (absent)")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{dist} needs {req} (have {have})")
    return unmet


def part_env(res: Results, work: Path) -> None:
    def env() -> dict:
        import importlib
        import importlib.metadata as md
        import platform

        import torch

        out = {
            "python": platform.python_version(),
            "executable": sys.executable,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "threads": torch.get_num_threads(),
        }
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            out.update(
                gpu=torch.cuda.get_device_name(0),
                capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                gpu_memory_gib=round(props.total_memory / 2**30, 1),
                bf16_supported=torch.cuda.is_bf16_supported(),
                nccl=str(torch.cuda.nccl.version()) if hasattr(torch.cuda, "nccl") else None,
            )
        versions = {}
        for module, dist in [
            ("transformers", "transformers"), ("trl", "trl"), ("accelerate", "accelerate"), ("peft", "peft"),
            ("deepspeed", "deepspeed"), ("datasets", "datasets"), ("pydantic", "pydantic"),
            ("pydantic_core", "pydantic-core"), ("tokenizers", "tokenizers"), ("safetensors", "safetensors"),
            ("huggingface_hub", "huggingface-hub"), ("pyarrow", "pyarrow"), ("fsspec", "fsspec"),
            ("pandas", "pandas"), ("numpy", "numpy"), ("typing_extensions", "typing-extensions"),
            ("dill", "dill"), ("multiprocess", "multiprocess"), ("regex", "regex"), ("tqdm", "tqdm"),
            ("yaml", "pyyaml"), ("jinja2", "jinja2"), ("rich", "rich"), ("filelock", "filelock"),
        ]:  # fmt: skip
            try:
                mod = importlib.import_module(module)
                where = str(Path(getattr(mod, "__file__", "") or "?").parent)
                versions[module] = f"{getattr(mod, '__version__', None) or md.version(dist)} @ {where}"
            except BaseException as exc:  # noqa: BLE001
                versions[module] = f"IMPORT FAILED {type(exc).__name__}: {str(exc)[:200]}"
        out["versions"] = versions
        for k, v in versions.items():
            print(f"  {k:18s} {v}")
        try:
            from deepspeed.accelerator import get_accelerator

            out["deepspeed_accelerator"] = get_accelerator()._name
        except BaseException as exc:  # noqa: BLE001
            out["deepspeed_accelerator"] = f"failed {type(exc).__name__}: {exc}"
        # the SDK's training path imports, and what the lazy extras (RAG, endpoints, harness) are not needed for
        import sdk.evaluate.fidelity  # noqa: F401
        import sdk.stages.student  # noqa: F401
        import sdk.train.launch  # noqa: F401
        import sdk.train.runner  # noqa: F401
        import sdk.train.worker  # noqa: F401

        out["wheel_requirements"] = _check_wheel_requirements()
        out["lazy_extras_imported"] = [m for m in LAZY_EXTRAS if m in sys.modules]
        failed = [k for k, v in versions.items() if v.startswith("IMPORT FAILED")]
        unmet = out["wheel_requirements"]
        print("requirements of the carried wheels not met here:", unmet or "none")
        return {
            "status": "fail" if failed else "ok",
            "device": f"{out.get('gpu', 'cpu')} (cuda {out['cuda_available']})",
            "detail": f"torch {out['torch']} py {out['python']} ds-accel {out['deepspeed_accelerator']}"
            + (f"; import failed: {failed}" if failed else "")
            + f"; carried wheels' requirements unmet: {unmet or 'none'}",
            "env": out,
        }

    res.run("versions", env)


def _objective(res: Results, work: Path, name: str, stage: str, pairs: bool = False, store: bool = False, **train):
    def run() -> dict:
        from sdk.train.common import TrainRequest
        from sdk.train.runner import train_student
        from tests.test_train_objectives import good_pairs
        from tests.train_helpers import SYSTEM, tiny_recipe, write_iteration

        student, teacher = _tiny_pair(work / "models", peaky=store)
        it = write_iteration(work / "iter_00", good_pairs() if pairs else None)
        extra = {}
        if store:  # the label stage's fill: the teacher on the device, its top-k stored beside teacher.jsonl
            from sdk.config import ModelSpec
            from sdk.models import load_local
            from sdk.train.logit_store import STORE_DIR, LogitStore, fill_from_local_teacher

            model, tok = load_local(ModelSpec(provider="hf", name_or_path=str(teacher)))
            with LogitStore(it / STORE_DIR, 20) as logit_store:
                fill = fill_from_local_teacher(logit_store, model.eval(), tok, _ok_rows(it), SYSTEM)
            extra["fill"] = dict(fill, teacher_device=str(next(model.parameters()).device))
            del model
        recipe = tiny_recipe(student, teacher, stages=[stage], **train)
        calls = []

        def verifier(instruction, answer):
            calls.append(instruction)
            return [{"label": "x", "severity": "warning", "message": "m"}]

        with TrainProbe() as probe:
            metrics = train_student(
                TrainRequest.in_folder(recipe, it, work / "out", None, SYSTEM),
                verifier=verifier if stage == "rlaif" else None,
            )
        m = metrics["stages"][stage]
        row = {**_stage_fields(m), **probe.fields(), **extra}
        keep = ("source", "beta", "lmbda", "pairs", "rpo_alpha", "rewards_mean", "top_k", "examples")
        row["detail"] = " ".join(f"{k}={m[k]}" for k in keep if k in m)
        if store:
            row["detail"] += f" fill_tokens={extra['fill']['tokens']} fill_on={extra['fill']['teacher_device']}"
        if stage == "rlaif":
            row["detail"] += f" verifier_calls={len(calls)}"
        row["saved_dtype"] = _saved_dtypes(work / "out")
        if m.get("steps") != 3 or not row["finite"]:
            row["status"] = "fail"
            row["error"] = f"steps {m.get('steps')} (want 3), losses finite: {row['finite']}"
        return row

    res.run(name, run)


def part_sft(res, work):
    _objective(res, work, "sft", "sft")


def part_kd_online(res, work):
    _objective(
        res, work, "kd online fwd-KL", "kd", kd={"source": "online", "beta": 0.0, "lmbda": 0.5, "max_new_tokens": 8}
    )


def part_kd_store(res, work):
    _objective(res, work, "kd from store", "kd", store=True, kd={"source": "store", "beta": 0.0, "lmbda": 0.0})


def part_dpo(res, work):
    _objective(res, work, "dpo (rpo)", "dpo", pairs=True)


def part_rlaif(res, work):
    _objective(res, work, "rlaif (grpo)", "rlaif", rlaif={"num_generations": 2, "max_new_tokens": 8})


def part_scoring(res: Results, work: Path) -> None:
    """The SDK's loglik and fidelity on the device (load_local places the models as the pipeline does), against
    the same figures from float32 copies on the CPU."""

    def run() -> dict:
        import torch
        from transformers import AutoModelForCausalLM

        from sdk.config import GenerationSettings, ModelSpec
        from sdk.evaluate.fidelity import fidelity, perplexity
        from sdk.models import load_local
        from sdk.models.local import LocalChatModel
        from tests.train_helpers import ROWS, SYSTEM

        student_dir, teacher_dir = _tiny_pair(work / "models", peaky=True)
        convs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q, _ in ROWS]
        answers = [a for _, a in ROWS]

        def figures(teacher, student, tok, settings) -> dict:
            chat = LocalChatModel(teacher, tok, "tiny teacher", settings)
            ll = chat.loglik(convs, answers)
            prompts = [chat.render(c) for c in convs]
            fid = fidelity(teacher, student, tok, prompts, answers)
            ppl = perplexity(student, tok, answers)
            return {"loglik": ll, "fidelity": fid["summary"], "items": fid["items"], "ppl": ppl["ppl"], "chat": chat}

        # the device: as the pipeline loads them (load_local moves a model to CUDA when there is one)
        t_dev, tok = load_local(ModelSpec(provider="hf", name_or_path=str(teacher_dir)))
        s_dev, _ = load_local(ModelSpec(provider="hf", name_or_path=str(student_dir)))
        dev = figures(t_dev, s_dev, tok, GenerationSettings(max_new_tokens=12, batch_size=4))  # generation.bf16 auto
        device = str(next(t_dev.parameters()).device)
        generated = dev["chat"].generate(convs[:2])
        # the reference: float32 on the CPU, bf16 off
        t_cpu = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
        s_cpu = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
        ref = figures(t_cpu, s_cpu, tok, GenerationSettings(max_new_tokens=12, batch_size=4, bf16="off"))

        def diff(a, b):
            return max(abs(x - y) for x, y in zip(a, b))

        ll_diff = diff(dev["loglik"], ref["loglik"])
        keys = ("kl_per_token", "top1_agreement", "student_ppl", "teacher_ppl")
        fid_diff = {k: abs(dev["fidelity"][k] - ref["fidelity"][k]) for k in keys}
        item_kl_diff = diff([x["kl_per_token"] for x in dev["items"]], [x["kl_per_token"] for x in ref["items"]])
        print("loglik   device:", [round(x, 5) for x in dev["loglik"]])
        print("loglik   cpu32 :", [round(x, 5) for x in ref["loglik"]])
        print("fidelity device:", dev["fidelity"])
        print("fidelity cpu32 :", ref["fidelity"])
        print(f"max |diff| loglik {ll_diff:.2e}, per-item KL {item_kl_diff:.2e}, summary {fid_diff}")
        print("generated on the device:", generated)
        precision = dev["chat"].cache_params(dev["chat"].settings)["precision"]
        finite = all(math.isfinite(x) for x in dev["loglik"]) and all(math.isfinite(dev["fidelity"][k]) for k in keys)
        return {
            "device": device,
            "bf16": f"generation {precision}",
            "finite": finite,
            "loss": dev["fidelity"]["kl_per_token"],
            "detail": f"max|d| loglik {ll_diff:.1e} KL {fid_diff['kl_per_token']:.1e} top1 {fid_diff['top1_agreement']:.1e} "
            f"ppl {fid_diff['student_ppl']:.1e}; KL {dev['fidelity']['kl_per_token']}/{ref['fidelity']['kl_per_token']} "
            f"top1 {dev['fidelity']['top1_agreement']}/{ref['fidelity']['top1_agreement']} (dev/cpu32)",
            "loglik_device": dev["loglik"],
            "loglik_cpu_fp32": ref["loglik"],
            "fidelity_device": dev["fidelity"],
            "fidelity_cpu_fp32": ref["fidelity"],
            "ppl_device_cpu": [dev["ppl"], ref["ppl"]],
            "max_abs_diff": {"loglik": ll_diff, "item_kl": item_kl_diff, **fid_diff},
            "generated": generated,
        }

    res.run("loglik+fidelity", run)


def part_throughput(res: Results, work: Path) -> None:
    """One SFT-style step of a random SmolLM2-135M: fp32 (full precision matmuls), tf32, and bf16 autocast."""

    def run() -> dict:
        from contextlib import nullcontext

        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        device = _device()
        cuda = device.type == "cuda"
        batch, length, warmup, timed = (8, 512, 3, 10) if cuda else (1, 64, 1, 2)
        config = AutoConfig.from_pretrained(str(ASSETS / "smollm2-135m"))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device).train()
        params = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=cuda or None)
        ids = torch.randint(0, config.vocab_size, (batch, length), device=device)

        def sync():
            if cuda:
                torch.cuda.synchronize()

        def step(bf16: bool) -> float:
            with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        modes = {"fp32": ("highest", False), "tf32": ("high", False), "bf16": ("highest", True)}
        if not cuda:
            modes.pop("tf32")
        ms, losses = {}, {}
        for mode, (precision, bf16) in modes.items():
            torch.set_float32_matmul_precision(precision)
            for _ in range(warmup):
                step(bf16)
            sync()
            start = time.perf_counter()
            for _ in range(timed):
                loss = step(bf16)
            sync()
            ms[mode] = (time.perf_counter() - start) / timed * 1000
            losses[mode] = float(loss)
            print(
                f"{mode}: {ms[mode]:.1f} ms/step, {batch * length / ms[mode] * 1000:,.0f} tokens/s, loss {losses[mode]:.4f}"
            )
        torch.set_float32_matmul_precision("highest")
        ratio = ms["fp32"] / ms["bf16"]
        detail = f"{batch}x{length} ms/step " + " ".join(f"{k} {v:.1f}" for k, v in ms.items())
        detail += f"; fp32/bf16 {ratio:.2f}x" + (f", tf32/bf16 {ms['tf32'] / ms['bf16']:.2f}x" if "tf32" in ms else "")
        if not cuda:
            detail += " (CPU: reduced shape, only checks that it runs; the GPU shape is 8x512)"
        row = {
            "device": str(device),
            "bf16": f"ratio {ratio:.2f}x",
            "loss": losses["bf16"],
            "finite": all(math.isfinite(v) for v in losses.values()),
            "detail": detail,
            "ms_per_step": ms,
            "fp32_over_bf16": ratio,
            "params": params,
            "shape": [batch, length],
            "attn": getattr(model.config, "_attn_implementation", None),
        }
        if cuda:
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return row

    res.run("sft step 135M", run)


def _probe_rows(probe_dir: Path, task: str) -> tuple[str, str, list[dict]]:
    """bf16/device of the launched workers (the probes whose argv runs sdk.train.worker for `task`)."""
    records = []
    for path in sorted(probe_dir.glob("probe-*.json")):
        try:
            rec = json.loads(path.read_text())
        except ValueError:
            continue
        argv = rec.get("argv", [])
        is_worker = any("sdk.train.worker" in a or a.endswith("worker.py") for a in argv) or rec.get("rank") is not None
        wants_heal = "heal" in argv
        if is_worker and rec.get("linear_outputs") and wants_heal == (task == "heal"):
            records.append(rec)
    merged: dict[str, int] = {}
    for rec in records:
        for k, v in rec["linear_outputs"].items():
            merged[k] = merged.get(k, 0) + v
    bf16, devices = _bf16_summary(merged)
    return bf16, devices, [{"rank": r.get("rank"), "linear_outputs": r["linear_outputs"]} for r in records]


def _print_logs(folder: Path) -> None:
    for log in sorted(Path(folder).rglob("*_launch.log")):
        text = log.read_text(errors="replace")
        print(f"----- {log} ({len(text)} chars, last 150 lines) -----")
        print("\n".join(text.splitlines()[-150:]))


def _launch(res: Results, work: Path, part: str, kind: str, deepspeed: str | None, config: str | None) -> None:
    port = str(LAUNCH_PORTS[part])
    extra = ["--master_port", port] if kind == "deepspeed" else ["--main_process_port", port]
    launcher = {"kind": kind, "num_processes": 1, "extra_args": extra, **({"config": config} if config else {})}
    setting = f"{kind} {deepspeed or config}"

    def heal() -> dict:
        from sdk.config import GenerationSettings, HealSettings, ModelSpec, TrainSettings
        from sdk.models import load_local
        from sdk.models.local import LocalChatModel
        from sdk.stages import student as student_stage
        from tests.train_helpers import tiny_model_dir, tiny_pruning_setup

        probe = work / "probe-heal"
        probe.mkdir(parents=True, exist_ok=True)
        path = tiny_model_dir(work / "heal_teacher", layers=6, seed=1, tokenizer=_tokenizer())
        hf = ModelSpec(provider="hf", name_or_path=str(path))
        model, tok = load_local(hf)  # on the GPU when there is one, as the pipeline's teacher
        teacher = LocalChatModel(model, tok, "tiny teacher", GenerationSettings(max_new_tokens=4))
        models, inputs = tiny_pruning_setup(path, teacher)
        train = TrainSettings(launcher=launcher, deepspeed=deepspeed)
        settings = HealSettings(steps=3, batch_size=2, max_length=32, general_fraction=0.0, warmup_ratio=0.0)
        os.environ[PROBE_ENV] = str(probe)
        try:
            record = student_stage.build(
                student_stage.StudentSettings(models, settings, 0, train), inputs, teacher, "tiny teacher"
            )
        finally:
            os.environ.pop(PROBE_ENV, None)
            _print_logs(work)
        h = record["heal"]
        losses = [x["loss"] for x in h["loss_history"]]
        bf16, devices, ranks = _probe_rows(probe, "heal")
        from transformers import AutoConfig

        layers = AutoConfig.from_pretrained(record["path"]).num_hidden_layers
        row = {
            "loss": losses[-1] if losses else None,
            "finite": bool(losses) and all(math.isfinite(x) for x in losses),
            "steps": h["steps"],
            "processes": h["processes"],
            "zero": "ds" if h["deepspeed"] else None,
            "bf16": bf16,
            "device": devices,
            "saved_dtype": _saved_dtypes(Path(record["path"])),
            "detail": f"{setting}; layers {layers}; KL after heal {record['after_heal']['kl_per_token']} "
            f"(before {record['before_heal']['kl_per_token']}); parent teacher on {str(next(model.parameters()).device)}",
            "workers": ranks,
        }
        if h["steps"] != 3 or not row["finite"] or layers != 4 or h["processes"] != 1 or not h["deepspeed"]:
            row["status"] = "fail"
            row["error"] = f"steps {h['steps']}, finite {row['finite']}, layers {layers}, deepspeed {h['deepspeed']}"
        return row

    def train() -> list[dict]:
        from sdk.train.common import TrainRequest
        from sdk.train.runner import train_student
        from tests.train_helpers import SYSTEM, tiny_recipe, write_iteration

        probe = work / "probe-train"
        probe.mkdir(parents=True, exist_ok=True)
        student, teacher = _tiny_pair(work / "models")
        it = write_iteration(work / "iter_00")
        recipe = tiny_recipe(
            student, teacher, stages=["sft", "kd"], kd={"lmbda": 0.0}, launcher=launcher, deepspeed=deepspeed
        )
        os.environ[PROBE_ENV] = str(probe)
        try:
            metrics = train_student(TrainRequest.in_folder(recipe, it, work / "out", None, SYSTEM))
        finally:
            os.environ.pop(PROBE_ENV, None)
            _print_logs(it)
        bf16, devices, ranks = _probe_rows(probe, "train")
        saved = _saved_dtypes(work / "out")
        stages = {}
        for name in ("sft", "kd"):
            m = metrics["stages"][name]
            stages[name] = _stage_fields(m)
        bad = [n for n, s in stages.items() if s["steps"] != 3 or not s["finite"] or s["processes"] != 1]
        want_zero = {"zero2.json": 2, "zero3.json": 3, "zero2": 2, "zero3": 3}.get(deepspeed or "", 3)
        wrong_zero = [n for n, s in stages.items() if s["zero"] != want_zero]
        row = {
            "loss": stages["kd"]["loss"],
            "finite": all(s["finite"] for s in stages.values()),
            "steps": "/".join(str(s["steps"]) for s in stages.values()),
            "processes": stages["sft"]["processes"],
            "zero": "/".join(str(s["zero"]) for s in stages.values()),
            "bf16": bf16,
            "device": devices,
            "saved_dtype": saved,
            "detail": f"{setting}; sft loss {stages['sft']['loss']} kd loss {stages['kd']['loss']}",
            "stages": stages,
            "workers": ranks,
        }
        if bad or wrong_zero:
            row["status"] = "fail"
            row["error"] = f"stages off: {bad}; ZeRO stage not {want_zero}: {wrong_zero}"
        return row

    res.run(f"heal [{setting}]", heal)
    res.run(f"train sft,kd [{setting}]", train)


def part_launch_ds_zero2(res, work):
    _launch(res, work, "launch_ds_zero2", "deepspeed", "zero2", None)


def part_launch_ds_zero3(res, work):
    _launch(res, work, "launch_ds_zero3", "deepspeed", "zero3", None)


def part_launch_accelerate(res, work):
    _launch(res, work, "launch_accelerate", "accelerate", None, "zero3.yaml")


def child_main(part: str, work: Path, result: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    res = Results(part, result)
    try:
        _setup_child(work)
        globals()[f"part_{part}"](res, work)
    finally:
        res.write({"modules": sorted({m.split(".")[0] for m in list(sys.modules)})})
    return 0


# ==========================================================================================================
# the orchestrator (imports nothing heavy: each part runs in its own process)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _wheel_dist(path: Path) -> str:
    return _norm(path.name.split("-")[0])


def closure_report(modules: set[str]) -> tuple[list[str], list[dict]]:
    """Which distributions the imported top-level modules come from, and where the device gets each."""
    import importlib.metadata as md

    by_module = md.packages_distributions()
    device = {_norm(n) for n in DEVICE_PACKAGES}
    wheels = {_wheel_dist(p): p.name for p in sorted(WHEELS.glob("*.whl"))}
    local = {"sdk", "tests", "bench", "sitecustomize", "gpu_check", "__main__", "__mp_main__", "_distutils_hack"}
    rows, unmapped = [], []
    for mod in sorted(modules):
        if mod in sys.stdlib_module_names or mod in local or mod in sys.builtin_module_names:
            continue
        dists = by_module.get(mod)
        if not dists:
            unmapped.append(mod)
            continue
        for dist in sorted({_norm(d) for d in dists}):
            on_device, wheel = dist in device, wheels.get(dist)
            where = (
                f"wheel {wheel} (overrides the device's)"
                if on_device and wheel
                else "device"
                if on_device
                else f"wheel {wheel}"
                if wheel
                else "MISSING"
            )
            rows.append({"module": mod, "dist": dist, "where": where})
    # A dist the device lacks that only device-side packages require (here, in this machine's versions of them,
    # directly or through other such dists) is their business: the device's own versions bring what they need.
    missing = {r["dist"] for r in rows if r["where"] == "MISSING"}
    imported = {r["dist"] for r in rows}
    requirers = {d: [(n, v) for n, v in _required_by(d) if _norm(n) in imported] for d in missing}
    device_side = set()
    changed = True
    while changed:
        changed = False
        for dist in missing - device_side:
            names = {_norm(n) for n, _ in requirers[dist]}
            if all((n in device and n not in wheels) or n in device_side for n in names):
                device_side.add(dist)
                changed = True
    for row in rows:
        if row["where"] == "MISSING":
            by = ", ".join(f"{n} {v}" for n, v in requirers[row["dist"]])
            row["where"] = (
                f"not needed: imported here only by this machine's {by}" if by and row["dist"] in device_side
                else "not needed: an optional import here (no imported package requires it)" if not by
                else f"MISSING (required here by {by})"
            )  # fmt: skip
    return unmapped, rows


def _required_by(dist: str) -> list[tuple[str, str]]:
    """(name, version) of the installed distributions that require `dist` (extras aside)."""
    import importlib.metadata as md
    import re

    found = set()
    for d in md.distributions():
        for text in d.requires or []:
            name = re.match(r"[A-Za-z0-9._-]+", text)
            if name and _norm(name.group(0)) == dist and "extra ==" not in text:
                found.add((d.metadata["Name"], d.version))
    return sorted(found)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _fmt(v, width: int) -> str:
    if v is None:
        s = "-"
    elif isinstance(v, bool):
        s = "yes" if v else "NO"
    elif isinstance(v, float):
        s = f"{v:.4g}"
    else:
        s = str(v)
    return s if len(s) <= width else s[: width - 1] + "~"


def print_table(rows: list[dict]) -> None:
    cols = [("part", 17), ("item", 30), ("status", 6), ("s", 6), ("loss", 8), ("finite", 6), ("bf16", 16),
            ("device", 9), ("steps", 5), ("zero", 5), ("saved_dtype", 22)]  # fmt: skip
    head = " ".join(f"{name:{w}s}" for name, w in cols)
    print(head)
    print("-" * len(head))
    for r in rows:
        r = dict(r, s=r.get("seconds"))
        print(" ".join(f"{_fmt(r.get(name), w):{w}s}" for name, w in cols))
        if r.get("detail"):
            print(f"{'':17s}   {_fmt(r['detail'], 200)}")
        if r.get("status") != "ok" and r.get("error"):
            print(f"{'':17s}   ERROR {_fmt(r['error'], 200)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated, from: " + ", ".join(PARTS))
    parser.add_argument("--out", default=os.environ.get("OUT"), help="write gpu_check.json and gpu_check.log here")
    parser.add_argument("--jobs", type=int, default=0, help="parts at once (default: 4 on CUDA, 1 on a CPU)")
    parser.add_argument("--budget", type=float, default=0, help="seconds for the whole check (default: 420 on CUDA)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per part (default: 1 on a CPU, cores/jobs on CUDA)"
    )
    parser.add_argument(
        "--timeout", type=float, default=0, help="seconds per part, for every part (default: each its own)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.work, args.result)

    start = time.time()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}")
    if args.device == "auto":
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True
        )
        cuda = probe.stdout.strip() == "True"
        if probe.returncode:
            print("torch import failed:", _tail(probe.stderr, 5))
    else:
        cuda = args.device == "cuda"
    jobs = args.jobs or (4 if cuda else 1)
    budget = args.budget or (420 if cuda else 0)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // jobs) if cuda else 1)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(PROBE_ENV, None)
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if threads:
        env[THREADS_ENV] = str(threads)
        env["OMP_NUM_THREADS"] = str(threads)
    print(
        f"gpu_check: device {'cuda' if cuda else 'cpu'}, parts {parts}, jobs {jobs}, budget {budget or 'none'} s, "
        f"work {work}, out {out}",
        flush=True,
    )
    log_path = (out or work) / "gpu_check.log"
    log = open(log_path, "w", encoding="utf-8")

    pending = list(parts)
    running: dict[str, tuple[subprocess.Popen, float, float, object]] = {}
    results: dict[str, list[dict]] = {}
    modules: set[str] = set()

    def finish(part: str, proc: subprocess.Popen, began: float, timed_out: bool) -> None:
        part_dir = work / part
        result = part_dir / "result.json"
        text = (part_dir / "part.log").read_text(errors="replace") if (part_dir / "part.log").exists() else ""
        log.write(f"\n\n########## {part} (exit {proc.returncode}, {time.time() - began:.0f} s) ##########\n")
        log.write(text[-3_000_000:])
        log.flush()
        data = {}
        if result.exists():
            try:
                data = json.loads(result.read_text())
            except ValueError:
                pass
        rows = data.get("rows", [])
        modules.update(data.get("modules", []))
        for probe in part_dir.rglob("probe-*.json"):
            try:
                modules.update(json.loads(probe.read_text()).get("modules", []))
            except ValueError:
                pass
        if timed_out or proc.returncode or not rows:
            why = (
                f"timed out after {time.time() - began:.0f} s"
                if timed_out
                else f"exit status {proc.returncode}"
                if proc.returncode
                else "no result"
            )
            rows = rows + [
                {
                    "part": part,
                    "item": "(part)",
                    "status": "fail",
                    "error": why,
                    "trace": _tail(text, 12),
                    "seconds": round(time.time() - began, 1),
                }
            ]
        results[part] = rows
        for r in rows:
            print(
                f"[{time.time() - start:5.0f}s] {part:17s} {r['item']:30s} {r['status']:4s} {r.get('seconds', '')} s"
                + (f"  loss {r['loss']:.4g}" if isinstance(r.get("loss"), (int, float)) else "")
                + (f"  bf16 {r['bf16']}" if r.get("bf16") else "")
                + (f"  on {r['device']}" if r.get("device") else ""),
                flush=True,
            )
            if r["status"] != "ok":
                print(f"    {r.get('error')}")
                for line in r.get("trace") or []:
                    print(f"    | {line}")
        if not args.keep:
            for folder in ("models", "out", "iter_00", "heal_teacher", "cache"):
                shutil.rmtree(part_dir / folder, ignore_errors=True)

    def start_part(part: str) -> None:
        cpu_timeout, cuda_timeout, _ = PARTS[part]
        timeout = args.timeout or (cuda_timeout if cuda else cpu_timeout)
        if budget:
            timeout = min(timeout, budget - (time.time() - start))
        part_dir = work / part
        part_dir.mkdir(parents=True, exist_ok=True)
        fh = open(part_dir / "part.log", "w", encoding="utf-8")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--work", str(part_dir)]
        cmd += ["--result", str(part_dir / "result.json")]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        running[part] = (proc, time.time(), timeout, fh)
        print(f"[{time.time() - start:5.0f}s] start {part} (timeout {timeout:.0f} s)", flush=True)

    try:
        while pending or running:
            for part, (proc, began, timeout, fh) in list(running.items()):
                timed_out = proc.poll() is None and time.time() - began > timeout
                if timed_out:
                    _kill_group(proc)
                if proc.poll() is not None:
                    fh.close()
                    del running[part]
                    finish(part, proc, began, timed_out)
            while pending:
                part = pending[0]
                exclusive = PARTS[part][2]
                if exclusive and running:
                    break
                if running and any(PARTS[p][2] for p in running):
                    break
                if len(running) >= jobs:
                    break
                left = budget - (time.time() - start) if budget else None
                if left is not None and left < 30:
                    pending.pop(0)
                    results[part] = [{"part": part, "item": "(part)", "status": "skip", "error": "out of budget"}]
                    print(f"skip {part}: out of budget", flush=True)
                    continue
                pending.pop(0)
                start_part(part)
            time.sleep(0.5)
    except KeyboardInterrupt:
        for proc, *_ in running.values():
            _kill_group(proc)
        raise
    finally:
        log.close()

    rows = [r for p in parts for r in results.get(p, [])]
    env_row = next((r for r in rows if r["part"] == "env"), {})
    unmapped, closure = closure_report(modules)
    print("\n==== imported distributions that the device lacks or that travel as wheels ====")
    for c in closure:
        if c["where"] != "device":
            print(f"  {c['module']:20s} {c['dist']:20s} {c['where']}")
    print(f"  ({sum(c['where'] == 'device' for c in closure)} more from the device's own packages;"
          f" unmapped top-level names: {unmapped})")  # fmt: skip
    print(f"  lazy extras imported by any part (the train path should need none): {sorted(set(LAZY_EXTRAS) & modules)}")
    missing = [c for c in closure if c["where"].startswith("MISSING")]
    if missing:
        print(f"  MISSING on the device with no wheel: {sorted({c['dist'] for c in missing})}")
    print(f"\n==== gpu_check summary ({'cuda' if cuda else 'cpu'}, {time.time() - start:.0f} s) ====")
    print_table(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "fail", "skip")}
    print(f"{counts['ok']} passed, {counts['fail']} failed" + (f", {counts['skip']} skipped" if counts["skip"] else ""))
    summary = {
        "device": "cuda" if cuda else "cpu",
        "seconds": round(time.time() - start, 1),
        "counts": counts,
        "env": env_row.get("env"),
        "rows": rows,
        "closure": closure,
        "unmapped_modules": unmapped,
        "lazy_extras_imported": sorted(set(LAZY_EXTRAS) & modules),
        "log": str(log_path),
    }
    if out:
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
        print(f"wrote {out / 'gpu_check.json'} and {log_path}")
    if not args.keep and out:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not counts["fail"] else 1


if __name__ == "__main__":
    sys.exit(main())
