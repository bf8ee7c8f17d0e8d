"""End-to-end runs on the tiny test pack with the embedded teacher and pruned student."""

import base64
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

import sdk
from tests.conftest import TINY_PACKS, distill_cmd
from tests.openai_server import FakeOpenAIServer

SMOKE = ["--domain", "tiny", "--pack-path", str(TINY_PACKS), "--preset", "smoke"]
ONE_ITERATION = ["--set", "adversarial.iterations=1"]
ITERATION_FILES = [
    "train_pool.jsonl",
    "cache_pool.jsonl",
    "teacher.jsonl",
    "train_metrics.json",
    "eval_student.jsonl",
    "eval.json",
    "student_answers.jsonl",
    "referee.jsonl",
    "hard.jsonl",
    "easy.jsonl",
    "discrimination.json",
    "generated.jsonl",
    "generation_rejected.jsonl",
    "generation.json",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    start = time.time()
    result = sdk.distill(
        domain="tiny",
        preset="smoke",
        run_dir=run_dir,
        pack_paths=[TINY_PACKS],
        set=["train.report_to=tensorboard"],  # TRL's own logging, beside the report
    )
    return result, time.time() - start


def test_smoke_run_writes_the_documented_layout(smoke_run):
    result, elapsed = smoke_run
    root = Path(result.run_dir)
    for rel in [
        "config.yaml",
        "manifest.json",
        "metrics.json",
        "report.html",
        "eval/domain.json",
        "eval/before.json",
        "eval/student_after.jsonl",
        "eval/forgetting.json",
        "student/config.json",
        "student/README.md",
    ]:
        assert (root / rel).is_file(), rel
    from huggingface_hub import ModelCard

    card = ModelCard.load(root / "student" / "README.md")  # the Hugging Face model card parses
    assert "distillery" in card.data.tags and "tiny" in card.data.tags and card.data.eval_results
    for it in ("iter_00", "iter_01"):
        for name in ITERATION_FILES:
            assert (root / it / name).is_file(), f"{it}/{name}"
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.partial.jsonl"))
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    loop = [
        f"{it}/{stage}"
        for it in ("iter_00", "iter_01")
        for stage in ("pool", "label", "train", "eval", "discriminate", "generate")
    ]
    assert list(manifest["stages"]) == [
        "ingest",
        "eval_teacher",
        "student",
        "forgetting_before",
        "synthesize",
        "eval_before",
        *loop,
        "forgetting_after",
        "finalize",
    ]
    assert elapsed < 600  # about 4 minutes on an idle 2-core CPU


def test_a_smoke_run_writes_only_declared_files(smoke_run):
    """Every file in the run directory (but the run's own bookkeeping) is declared by the stage that wrote it."""
    from sdk.pipeline import STAGES
    from sdk.store import RunStore

    root = Path(smoke_run[0].run_dir)
    store = RunStore(root)
    layout = store.layout
    last = len(layout.iterations()) - 1
    declared = {layout.config, layout.manifest, layout.lock, layout.budget("teacher").parent}  # the run's bookkeeping
    for name, info in store.manifest["stages"].items():
        stage_name = name.split("/")[-1]
        k = int(name.split("/")[0].split("_")[1]) if "/" in name else None
        stage = next(s for s in STAGES if s.name == stage_name and s.per_iteration == (k is not None))
        paths = set(stage.outputs(layout, k, last))
        declared |= paths
        for out in info["outputs"]:
            assert root / out in paths, f"{name} wrote {out}, which it does not declare"
    for path in root.rglob("*"):
        if path.is_file() and not any(path == d or d in path.parents for d in declared):
            pytest.fail(f"{path.relative_to(root)} is not declared by any stage")


def test_report_to_tensorboard_writes_event_files_per_objective(smoke_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(smoke_run[0].run_dir)
    events = sorted(root.glob("iter_*/checkpoints/*/runs/*/events.out.tfevents.*"))
    # every iteration that trained (one whose generated pool came back empty records a skip instead)
    trained = {
        it.name for it in root.glob("iter_*") if json.loads((it / "train_metrics.json").read_text()).get("stages")
    }
    assert "iter_00" in trained and {p.relative_to(root).parts[0] for p in events} == trained
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and acc.Scalars("train/loss")


def test_every_sample_carries_id_instruction_provenance(smoke_run):
    result, _ = smoke_run
    for path in Path(result.run_dir).rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["id"], path
            # only a generator reply that could not be parsed has no instruction; its raw text is kept
            assert row["instruction"] or (
                path.name in ("synthesis_rejected.jsonl", "generation_rejected.jsonl")
                and row["raw"] is not None
                and row["reason"]
            ), path
            assert {"document", "chunk_id", "stage", "model"} <= set(row["provenance"]), path
    teacher_rows = [json.loads(x) for x in (Path(result.run_dir) / "iter_00/teacher.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" and r["answer"] for r in teacher_rows)
    assert teacher_rows[0]["provenance"]["labeled_by"] == "SmolLM2-135M-Instruct"


def test_pool_holds_synthesised_rows_pointing_at_real_chunks(smoke_run):
    from sdk.knowledge.retrieve import Retriever  # noqa: F401  (the index is a real llama-index store)

    result, _ = smoke_run
    root = Path(result.run_dir)
    knowledge = json.loads((root / "knowledge.json").read_text())
    chunks = {
        json.loads(x)["chunk_id"]: json.loads(x)
        for x in (Path(knowledge["index_dir"]) / "chunks.jsonl").read_text().splitlines()
    }
    synthesized = [json.loads(x) for x in (root / "iter_00/synthesized.jsonl").read_text().splitlines()]
    rejected = [json.loads(x) for x in (root / "iter_00/synthesis_rejected.jsonl").read_text().splitlines()]
    assert synthesized or rejected  # the stage ran on real passages
    pool_ids = {json.loads(x)["id"] for x in (root / "iter_00/train_pool.jsonl").read_text().splitlines()}
    for row in synthesized + rejected:
        prov = row["provenance"]
        assert chunks[prov["chunk_id"]]["sha256"] == prov["passage_sha256"]
    assert {r["id"] for r in synthesized} <= pool_ids


def test_metrics_hold_before_and_after(smoke_run):
    result, _ = smoke_run
    m = result.metrics
    assert m == json.loads((Path(result.run_dir) / "metrics.json").read_text())
    for tag in ("before", "after"):
        s = m["eval"][tag]
        assert 0.0 <= s["rougeL_vs_teacher"] <= 1.0
        assert s["teacher_loglik"] < 0
        assert 0.0 <= s["key_point_recall"] <= 1.0
    assert m["eval"]["before"] != m["eval"]["after"]  # training changed the student
    first = m["iterations"][0]
    assert first["train"]["steps"] == math.ceil(first["teacher_ok"] / 2)  # the smoke preset: 1 epoch, batch 2
    assert m["train"]["steps"] == sum(i["train"]["steps"] for i in m["iterations"])
    d = m["data"]
    assert d["train_pool"] == 8 + d["synthesized"] and first["teacher_ok"] + first["teacher_failed"] == d["train_pool"]
    assert d["eval_prompts"] == 4 and d["corpus_chunks"] >= 2


def _jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_loop_pools_split_and_generation(smoke_run):
    """Two iterations: hard/easy from the referee, generated rows with parents, pools chained."""
    from rouge_score import rouge_scorer

    result, _ = smoke_run
    root = Path(result.run_dir)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for k in (0, 1):
        it = root / f"iter_{k:02d}"
        cache = _jsonl(it / "cache_pool.jsonl")
        referee = _jsonl(it / "referee.jsonl")
        hard, easy = _jsonl(it / "hard.jsonl"), _jsonl(it / "easy.jsonl")
        assert {r["id"] for r in referee} <= {r["id"] for r in cache}
        assert {r["id"] for r in hard} == {r["id"] for r in referee if r["hard"] is True}
        assert {r["id"] for r in easy} == {r["id"] for r in referee if r["hard"] is False}
        for r in referee:
            assert r["referee"] == "likelihood" and 1 <= r["teacher_score"] <= 10 and 1 <= r["student_score"] <= 10
            assert r["gap"] == pytest.approx(r["teacher_score"] - r["student_score"], abs=1e-3)
            assert set(r["rubric"]) == {"accuracy", "clarity"} and r["tau"] == 1.0
        generated = _jsonl(it / "generated.jsonl")
        stats = json.loads((it / "generation.json").read_text())
        assert stats["kept"] == len(generated) and stats["attempts"] <= 18
        assert stats["kept"] + stats["rejected"] == stats["attempts"]
        parents = {"hard": {r["id"] for r in hard}, "easy": {r["id"] for r in easy}}
        for row in generated:
            assert row["parent_id"] in parents[row["source"]]
        if hard and easy:  # Lion's 1:1, within one instruction
            sources = [r["source"] for r in generated]
            assert abs(sources.count("hard") - sources.count("easy")) <= 1
        reference = [r["instruction"] for r in cache]  # kept rows in the order they were accepted
        for row in generated:
            assert max(scorer.score(ref, row["instruction"])["rougeL"].fmeasure for ref in reference) < 0.7, row
            reference.append(row["instruction"])
    # iteration 1 trains on what iteration 0 generated; its cache pool is everything so far
    gen0 = _jsonl(root / "iter_00/generated.jsonl")
    pool1 = _jsonl(root / "iter_01/train_pool.jsonl")
    assert [r["id"] for r in pool1 if r["source"] == "generated"] == [r["id"] for r in gen0]
    # plus half as many earlier instructions, carried with the answers the teacher already gave (no new calls)
    carried = [r for r in pool1 if r["source"] == "carried"]
    assert len(carried) == round(0.5 * len(gen0)) and len(pool1) == len(gen0) + len(carried)
    assert {r["id"] for r in carried} <= {r["id"] for r in _jsonl(root / "iter_00/train_pool.jsonl")}
    labels0 = {r["id"]: r["answer"] for r in _jsonl(root / "iter_00/teacher.jsonl")}
    labels1 = {r["id"]: r for r in _jsonl(root / "iter_01/teacher.jsonl")}
    assert all(
        labels1[r["id"]]["answer"] == labels0[r["id"]] and labels1[r["id"]]["provenance"]["reused"] for r in carried
    )
    assert [r["id"] for r in _jsonl(root / "iter_01/cache_pool.jsonl")] == [
        r["id"] for r in _jsonl(root / "iter_00/cache_pool.jsonl") + gen0
    ]
    m = result.metrics
    assert len(m["iterations"]) == 2 and len(m["relative_score"]["per_iteration"]) == 2
    for i in m["iterations"]:
        d = i["discrimination"]
        assert d["hard"] + d["easy"] + d["unparsed"] == d["refereed"] and 0 <= d["hard_ratio"] <= 1
        assert d["gap_mean"] is not None and d["gap_median"] is not None
        assert 0 < i["eval"]["relative_score"] <= 100 * 10
        assert set(i["generation"]["rejected_by_reason"]) <= {
            "failed",
            "unparseable",
            "quality",
            "off_domain",
            "rouge",
            "cosine",
            "surplus",
            "balance",
        }


def test_forgetting_before_and_after_on_the_local_suite(smoke_run):
    result, _ = smoke_run
    record = json.loads((Path(result.run_dir) / "eval/forgetting.json").read_text())
    assert set(record["before"]) == set(record["after"]) == {"distillery_general_mc", "distillery_general_ppl"}
    for task, row in record["gate"]["tasks"].items():
        # before/after/drop are each stored rounded to 6 decimals
        assert row["drop"] == pytest.approx(
            row["before"] - row["after"] if row["higher_is_better"] else (row["after"] - row["before"]) / row["before"],
            abs=1e-5,
        )
    f = result.metrics["forgetting"]
    assert (
        f["passed"] == record["gate"]["passed"]
        and f["verdict"].endswith("forgetting check")
        or "failed forgetting check" in f["verdict"]
    )
    assert result.metrics["checks"]["forgetting"] in ("passed", "failed forgetting check")


def test_saved_student_loads_and_is_pruned(smoke_run):
    from transformers import AutoModelForCausalLM

    result, _ = smoke_run
    model = AutoModelForCausalLM.from_pretrained(result.student_path)
    assert model.config.num_hidden_layers == 20
    init = json.loads((Path(result.run_dir) / "student_init.json").read_text())
    assert init["prune"]["kept"][0] == 0 and init["prune"]["kept"][-1] == 29 and len(init["prune"]["kept"]) == 20
    assert len(init["prune"]["block_influence"]) == 30 and init["heal"]["steps"] > 0
    assert (
        init["before_heal"]["kl_per_token"] < 3.5
    )  # a working model, not a broken one (the old every-3rd student: ~12)
    assert result.metrics["student_init"]["prune"]["kept"] == init["prune"]["kept"]


def test_fidelity_and_degeneration_lead_the_held_out_metrics(smoke_run):
    result, _ = smoke_run
    for when in ("before", "after"):
        e = result.metrics["eval"][when]
        assert 0 <= e["kl_per_token"] < 11 and 0 <= e["top1_agreement"] <= 1 and e["student_ppl"] > 1
        assert e["domain_ppl"] > 1 and 0 <= e["distinct_trigram_ratio"] <= 1 and e["looping_answers"] >= 0
    assert result.metrics["eval"]["teacher"]["domain_ppl"] > 1
    rows = json.loads((Path(result.run_dir) / "iter_01" / "eval_student.jsonl").read_text().splitlines()[0])
    assert set(rows["degeneration"]) >= {"distinct_trigram_ratio", "longest_repeat", "looping", "empty"}


def test_run_refuses_to_overwrite_a_run(smoke_run):
    result, _ = smoke_run
    with pytest.raises(sdk.ConfigError, match="distill resume"):
        sdk.distill(domain="tiny", preset="smoke", run_dir=result.run_dir, pack_paths=[TINY_PACKS])


def _cli(*args, **kw):
    return subprocess.run(distill_cmd() + list(args), capture_output=True, text=True, timeout=600, **kw)


def test_unknown_domain_is_one_line_without_traceback(tmp_path):
    proc = _cli("run", "--domain", "nosuch", "--preset", "smoke", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "unknown domain 'nosuch'" in err and "medicine" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in proc.stderr + proc.stdout


def test_unknown_recipe_key_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    proc = _cli("run", *SMOKE, "--config", str(bad), "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "unknown key 'train.epoch'" in err and "epochs" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in proc.stderr + proc.stdout


def _wait_for(predicate, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("kill point not reached")


def test_sigkill_during_training_then_resume(tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        # a checkpoint every 4 steps and two epochs, so steps remain after checkpoint-4 to be killed in
        distill_cmd()
        + ["run", *SMOKE, *ONE_ITERATION, "--set", "train.epochs=2", "--set", "train.save_steps=4"]
        + ["--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(lambda: (run_dir / "iter_00/checkpoints/sft/checkpoint-4/trainer_state.json").exists(), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert "iter_00/train" not in before and "iter_00/label" in before
    teacher_bytes = (run_dir / "iter_00/teacher.jsonl").read_bytes()

    done = _cli("resume", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads((run_dir / "manifest.json").read_text())
    assert after["status"] == "finished"
    for stage, info in before.items():  # finished stages were not redone
        assert after["stages"][stage]["finished_at"] == info["finished_at"]
    assert (run_dir / "iter_00/teacher.jsonl").read_bytes() == teacher_bytes
    train = json.loads((run_dir / "iter_00/train_metrics.json").read_text())
    assert re.search(r"checkpoint-(4|8|12)$", train["stages"]["sft"]["resumed_from_checkpoint"])
    assert "skip iter_00/label" in done.stderr + done.stdout


def test_killed_labeling_does_not_pay_twice(tmp_path):
    """An endpoint teacher is killed mid-labeling; the resumed run asks only for unanswered prompts."""
    import threading

    slow = threading.Event()

    def reply(messages):
        slow.wait(0.3)
        return "A short answer about " + messages[-1]["content"].lower()

    run_dir = tmp_path / "endpoint"
    judge = FakeOpenAIServer(
        reply=lambda messages: '{"score_a": 6, "score_b": 4, "reason": "ok"}'
    )  # its own server: not counted
    with FakeOpenAIServer(reply=reply) as server, judge:
        teacher = [
            "--set",
            "models.teacher.provider=openai",
            "--set",
            f"models.teacher.base_url={server.base_url}",
            "--set",
            "models.teacher.model=t",
            "--set",
            "models.teacher.generation.batch_size=1",
            "--set",
            "models.student.base=generator",
            "--set",
            "models.referee.provider=openai",
            "--set",
            f"models.referee.base_url={judge.base_url}",
            "--set",
            "models.referee.model=judge",
        ]
        proc = subprocess.Popen(
            distill_cmd() + ["run", *SMOKE, *ONE_ITERATION, *teacher, "--run-dir", str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        journal = run_dir / "iter_00/teacher.partial.jsonl"
        _wait_for(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 4, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        paid_before = len(server.requests)
        done = _cli("resume", str(run_dir))
        assert done.returncode == 0, done.stderr[-3000:]
        prompts = [r["messages"][-1]["content"] for r in server.requests]
    pool = (run_dir / "iter_00/train_pool.jsonl").read_text().splitlines()
    expected = len(pool) + 4  # the training pool (seeds + synthesised) and the 4 eval prompts
    assert 4 <= paid_before < expected
    # every distinct prompt was paid for once, except at most the chunk in flight at the kill
    assert len(set(prompts)) == expected
    assert len(prompts) - len(set(prompts)) <= 4
    rows = [json.loads(x) for x in (run_dir / "iter_00/teacher.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * len(pool)


def test_scaffolded_pack_runs_with_pack_path(tmp_path):
    """`distill packs new` makes a pack that validates and that a smoke run can use."""
    new = _cli("packs", "new", "field-notes", "--path", str(tmp_path / "packs"))
    assert new.returncode == 0, new.stderr
    valid = _cli("packs", "validate", str(tmp_path / "packs" / "field-notes"))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    result = sdk.distill(
        domain="field-notes",
        preset="smoke",
        run_dir=tmp_path / "run",
        pack_paths=[tmp_path / "packs"],
        data__max_eval=2,
        train__epochs=1,
        adversarial__iterations=1,
        adversarial__generate_last=False,
    )
    assert result.metrics["domain"] == "field-notes" and result.metrics["data"]["eval_prompts"] == 2
    assert (Path(result.student_path) / "config.json").is_file()
    # the last iteration's generation is skipped (nothing would train on it), and the metrics say so
    assert not (Path(result.run_dir) / "iter_00/generated.jsonl").exists()
    assert result.metrics["iterations"][0]["generation"]["skipped"] and result.metrics["data"]["generated"] == 0
    # one more iteration on resume: iteration 0 generates then, iteration 1 trains on it, and the ending is redone
    more = sdk.resume(result.run_dir, set=["adversarial.iterations=2"])
    assert (Path(result.run_dir) / "iter_00/generated.jsonl").is_file() and len(more.metrics["iterations"]) == 2
    assert (
        not more.metrics["iterations"][0]["generation"].get("skipped")
        and more.metrics["iterations"][1]["generation"]["skipped"]
    )


def test_budget_stops_the_run_cleanly_and_resume_finishes_it(tmp_path, capsys):
    """A teacher budget of 6 calls: 4 eval answers, then 2 labels, then a clean stop; resume with more."""
    run_dir = tmp_path / "budget"
    result = sdk.distill(
        domain="tiny",
        preset="smoke",
        run_dir=run_dir,
        pack_paths=[TINY_PACKS],
        adversarial__iterations=1,
        models__teacher__budget__max_calls=6,
        curation__passages=0,
        eval__teacher_cache=False,  # the held-out answers are paid for, not taken from an earlier test's run
    )
    assert result.status == "stopped"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (
        manifest["status"] == "stopped"
        and "budget reached" in manifest["reason"]
        and "max_calls 6" in manifest["reason"]
    )
    assert "iter_00/label" not in manifest["stages"] and "eval_teacher" in manifest["stages"]
    assert json.loads((run_dir / "budget/teacher.json").read_text())["calls"] == 6
    assert (
        len((run_dir / "iter_00/teacher.partial.jsonl").read_text().splitlines()) == 2
    )  # the answers it paid for are kept
    assert "budget reached" in capsys.readouterr().err

    done = sdk.resume(run_dir, set=["models.teacher.budget.max_calls=100"])
    assert done.status == "finished"
    labeled = _jsonl(run_dir / "iter_00/teacher.jsonl")
    assert len(labeled) == 8 and all(r["status"] == "ok" for r in labeled)
    assert json.loads((run_dir / "budget/teacher.json").read_text())["calls"] == 6 + 6  # only the 6 unanswered seeds


# report.html ------------------------------------------------------------------------------------
class Page(HTMLParser):
    """Headings, images, links, ids and external references of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.headings, self.images, self.links, self.ids, self.external = [], [], [], set(), []
        self.samples = 0
        self._in_heading = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "h2":
            self._in_heading = True
            self.headings.append("")
        if tag == "img":
            self.images.append(a["src"])
        if tag == "a":
            self.links.append(a["href"])
        if tag in ("script", "link", "iframe") or (tag == "img" and not a["src"].startswith("data:")):
            self.external.append((tag, a))
        if tag == "div" and a.get("class") == "sample" and "id" not in a:
            self.samples += 1

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_heading = False

    def handle_data(self, data):
        if self._in_heading:
            self.headings[-1] += data


def _text_without_images(page: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "IMG", page)


def test_report_has_every_section_and_is_self_contained(smoke_run):
    result, _ = smoke_run
    root = Path(result.run_dir)
    text = (root / "report.html").read_text()
    page = Page(text)
    for heading in (
        "Recipe",
        "Held-out domain metrics",
        "The student: pruning and healing",
        "The loop, per iteration",
        "Forgetting check",
        "Training",
        "Where the time went",
        "Sample instructions",
        "Provenance: corpus chunks",
        "metrics.json",
    ):
        assert any(h.startswith(heading) for h in page.headings), (heading, page.headings)
    assert "run finished" in text
    assert not page.external  # opens offline: no scripts, stylesheets or images from elsewhere
    # seven plots: domain metrics, layer scores, healing loss, the loop, forgetting deltas, loss curves, stage
    # times; each a real PNG
    assert len(page.images) == 7
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # the recipe, the per-iteration domain rows, the forgetting verdict and its tasks
    assert "train stages" in text and "sft" in text and "replay fraction" in text
    assert "student after iteration 0" in text and "student after iteration 1" in text and ">teacher<" in text
    stages = result.metrics["timings_s"]  # where the time went: every stage, per iteration
    assert {"student", "iter_00/train", "iter_01/label"} <= set(stages) and all(v >= 0 for v in stages.values())
    assert "<td>label</td>" in text and "Seconds per stage" in text
    verdict = result.metrics["forgetting"]["verdict"]
    assert verdict.split(":")[0] in text and "distillery_general_mc" in text and "distillery_general_ppl" in text


def test_report_samples_hard_first_with_provenance_links(smoke_run):
    result, _ = smoke_run
    root = Path(result.run_dir)
    text = (root / "report.html").read_text()
    page = Page(text)
    assert page.samples == 5
    referee = [json.loads(x) for x in (root / "iter_01/referee.jsonl").read_text().splitlines()]
    hardest = max((r for r in referee if r["hard"]), key=lambda r: r["gap"])
    first = text.index("<div class='sample'>")
    assert text.index(hardest["id"], first) < text.index("<div class='sample'>", first + 1)  # the hardest comes first
    assert text.count("<b>Teacher</b>") == 5 and text.count("<b>Student</b>") == 5
    # every seed is linked to its nearest corpus chunk, and every in-page link lands on a chunk shown below
    grounding = [json.loads(x) for x in (root / "iter_00/seed_grounding.jsonl").read_text().splitlines()]
    knowledge = json.loads((root / "knowledge.json").read_text())
    chunk_ids = {
        json.loads(x)["chunk_id"] for x in (Path(knowledge["index_dir"]) / "chunks.jsonl").read_text().splitlines()
    }
    assert len(grounding) == 8 and {g["chunk_id"] for g in grounding} <= chunk_ids
    anchors = [link[1:] for link in page.links if link.startswith("#")]
    assert anchors and set(anchors) <= page.ids
    assert any(link.startswith("file://") for link in page.links)  # chunks link to their source files


def test_distill_report_rebuilds_from_the_run_directory_alone(smoke_run, tmp_path):
    result, _ = smoke_run
    copy = tmp_path / "moved"
    shutil.copytree(result.run_dir, copy)
    original = (copy / "report.html").read_text()
    (copy / "report.html").unlink()
    proc = subprocess.run(
        distill_cmd() + ["report", str(copy)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "relative score" in proc.stdout
    assert _text_without_images((copy / "report.html").read_text()) == _text_without_images(original)


@pytest.mark.slow
def test_forgetting_gate_fires_and_strict_exits_non_zero(tmp_path):
    """max_drop 0 and a learning rate that wrecks the student: the gate fails the run and --strict exits 3."""
    run_dir = tmp_path / "wrecked"
    settings = [
        "adversarial.iterations=1",
        "curation.passages=0",
        "forgetting.max_drop=0",
        "train.learning_rate=1e-2",
        "forgetting.limit=16",
    ]
    proc = subprocess.run(
        distill_cmd()
        + ["run", *SMOKE, "--run-dir", str(run_dir), "--strict"]
        + [a for s in settings for a in ("--set", s)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["checks"]["forgetting"] == "failed forgetting check"
    assert not metrics["forgetting"]["passed"] and metrics["forgetting"]["max_drop"] == 0
    failed = [t for t, row in metrics["forgetting"]["tasks"].items() if not row["passed"]]
    assert failed and all(metrics["forgetting"]["tasks"][t]["drop"] > 0 for t in failed)
    assert "failed forgetting check" in proc.stdout + proc.stderr
    assert "failed forgetting check" in (run_dir / "report.html").read_text()


def test_lora_without_merging_evaluates_and_hands_back_the_trained_adapter(tmp_path):
    """The adapter that was trained is the student that is evaluated, checked for forgetting and handed back."""
    from peft import AutoPeftModelForCausalLM

    from sdk.models.student import student_kind

    result = sdk.distill(
        domain="tiny",
        preset="smoke",
        run_dir=tmp_path / "lora",
        pack_paths=[TINY_PACKS],
        adversarial__iterations=1,
        train__lora__enabled=True,
        train__lora__merge=False,
        train__learning_rate=2e-3,
        forgetting__limit=8,
    )
    root = Path(result.run_dir)
    before = [json.loads(x)["answer"] for x in (root / "eval/student_before.jsonl").read_text().splitlines()]
    after = [json.loads(x)["answer"] for x in (root / "eval/student_after.jsonl").read_text().splitlines()]
    assert before != after  # the trained adapter answered, not the initial student
    assert student_kind(root / "iter_00/student") == "adapter" and student_kind(result.student_path) == "adapter"
    model = AutoPeftModelForCausalLM.from_pretrained(result.student_path)
    assert model.peft_config["default"].r == 16
    forgetting = json.loads((root / "eval/forgetting.json").read_text())
    assert forgetting["gate"]["tasks"]  # the check ran on the adapter's student
