"""The bundled domains/, corpora/ and configs/ are found from a built wheel, not only from the checkout."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_finds_bundled_data():
    from sdk.paths import data_dir

    assert (data_dir("domains") / "medicine" / "pack.yaml").is_file()
    assert (data_dir("corpora") / "medicine").is_dir()
    assert (data_dir("configs") / "recipes" / "smoke.yaml").is_file()


def test_built_wheel_carries_packs_corpora_and_recipes(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheel_dir.glob("distillery-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    code = (
        "import sdk.paths as p, sdk.packs as packs;"
        "d = p.data_dir('domains'); print(d);"
        "print(sorted(packs.discover_packs()));"
        "print(len(packs.resolve_pack('medical').corpus_files()));"
        "from sdk.evaluate.forgetting import local_task_names, LOCAL_TASKS_DIR;"
        "print(local_task_names(), sorted(f.name for f in LOCAL_TASKS_DIR.glob('*.jsonl')));"
        "from sdk.train.replay import general_instructions;"
        "print(len(general_instructions()), sorted(f.name for f in (p.data_dir('configs') / 'deepspeed').glob('*.json')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[0].startswith(str(target)) and lines[0].endswith("sdk/_data/domains")
    assert lines[1] == "['finance', 'law', 'medicine', 'science']"
    assert int(lines[2]) >= 25
    # the forgetting suite (lm-eval task YAML + data), the replay set and the DeepSpeed configs ship too
    assert (
        lines[3]
        == "['distillery_general', 'distillery_general_mc', 'distillery_general_ppl'] ['general_mc.jsonl', 'general_ppl.jsonl']"
    )
    count, deepspeed = lines[4].split(" ", 1)
    assert int(count) >= 200 and "zero3.json" in deepspeed


def test_importing_sdk_turns_hub_telemetry_off_unless_the_user_chose():
    code = "import sdk, huggingface_hub.constants as c; print(c.HF_HUB_DISABLE_TELEMETRY)"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY")}
    run = lambda extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert run({}) == "True"
    assert run({"HF_HUB_DISABLE_TELEMETRY": "0"}) == "False"
