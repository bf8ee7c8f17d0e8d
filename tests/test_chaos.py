"""Chaos: a smoke run whose teacher, referee and generator are fake OpenAI-compatible servers is SIGKILLed at
points drawn from a fixed seed, then resumed (and killed again at the next point) until it finishes.

It must end exactly where an uninterrupted run with the same seed ends: the same rows in every artifact, the
same trained weights, every stage in the manifest once, and no reply paid for twice beyond the requests that
were in flight at each kill. The response cache is off for every role, so only the run's own journals can
keep a resumed session from asking again.

Kill points are drawn with random.Random(0) from what the uninterrupted reference run did (which stage sent
which requests, how many rows and training steps there were): one point in each kind of stage, its iteration
drawn, and a second one, in the other iteration, in two of label, train, discriminate and generate (14 in all):
    request   the server kills the run when the k-th request of the stage arrives (before it is answered)
    lines     a journal of the stage holds K lines
    file      a file the stage writes appears (a checkpoint's trainer_state.json or folder, an index file)
    time      a drawn fraction of the stage's duration in the reference run after the stage started
    boundary  the moment the stage starts (for stages that take no time)
A time point whose stage ends first kills at the stage's end instead; the test prints where each kill landed.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tests.conftest import TINY_PACKS, distill_cmd
from tests.openai_server import FakeOpenAIServer
from tests.train_helpers import tiny_model_dir

SEED = 0
ROLES = ("teacher", "referee", "generator")
CONCURRENCY = 4  # requests in flight per role: at most this many can be paid twice per kill
SAVE_STEPS = 3
STAGE_ROLE = {
    "eval_teacher": "teacher",
    "label": "teacher",
    "synthesize": "generator",
    "generate": "generator",
    "eval_before": "referee",
    "eval": "referee",
    "discriminate": "referee",
}
SECOND_POINT = ("label", "train", "discriminate", "generate")  # two of these get a point in both iterations
SESSION_TIMEOUT_S = 300
VOLATILE = {"finished_at", "created_at", "updated_at", "timestamp", "runtime_s", "time_per_step_s"}
COMPARED = {
    "iteration": [
        "train_pool.jsonl",
        "cache_pool.jsonl",
        "teacher.jsonl",
        "student_answers.jsonl",
        "referee.jsonl",
        "hard.jsonl",
        "easy.jsonl",
        "discrimination.json",
        "generated.jsonl",
        "generation_rejected.jsonl",
        "generation.json",
        "eval_student.jsonl",
        "eval_referee.jsonl",
    ],
    "first": ["synthesized.jsonl", "synthesis_rejected.jsonl", "seed_grounding.jsonl"],
    "run": [
        "eval/teacher.jsonl",
        "eval/student_before.jsonl",
        "eval/referee_before.jsonl",
        "eval/student_after.jsonl",
    ],
}

TOPICS = ["asthma", "anaemia", "gout", "migraine", "sepsis", "angina", "eczema", "scabies", "rickets", "tetanus"]
ASKS = [
    "List the warning signs of",
    "Explain to a patient how doctors confirm",
    "Compare the first-line treatments for",
    "Draft a discharge note about",
    "Describe the long-term outlook in",
]


def _pick(text: str, options: list, salt: str) -> str:
    return options[int(hashlib.sha256((salt + text).encode()).hexdigest(), 16) % len(options)]


def chaos_reply(messages) -> str:
    """Every role's reply, from the prompt alone: a referee verdict, a new or synthesised instruction, an answer."""
    prompt = messages[-1]["content"]
    if "score_a" in prompt:
        a, b = (3 + int(_pick(prompt, list("0123456"), side)) for side in "ab")
        return json.dumps({"score_a": a, "score_b": b, "reason": "scripted"})
    if "Write one new instruction" in prompt:
        return f"{_pick(prompt, ASKS, 'a')} {_pick(prompt, TOPICS, 't')} in an older adult with kidney disease."
    if "new, self-contained instructions" in prompt:
        return "\n".join(f"{i}. {_pick(prompt, ASKS, str(i))} {_pick(prompt, TOPICS, 't' + str(i))}." for i in (1, 2))
    return "A careful clinical answer: " + prompt.lower()[:200]


# kill points ------------------------------------------------------------------------------------
@dataclass
class Point:
    stage: str  # the manifest's name of the stage the kill is meant to land in
    kind: str  # request | lines | file | time | boundary
    role: Optional[str] = None  # request: whose server counts
    k: int = 0  # request: the k-th request of the stage in this session; lines: K lines
    path: Optional[str] = None  # lines, file: relative to the run directory (or absolute)
    fraction: float = 0.0  # time: of the stage's duration in the reference run
    seconds: float = 0.0  # time: after the stage started (fraction x that duration)

    def __str__(self) -> str:
        what = {
            "request": f"{self.role} request #{self.k} of the stage",
            "lines": f"{self.path} has {self.k} lines",
            "file": f"{self.path} appears",
            "time": f"{self.fraction:.0%} of the way in ({self.seconds:.1f}s)",
            "boundary": "the stage starts",
        }[self.kind]
        return f"{self.stage}: {what}"


@dataclass
class Kill:
    point: Point
    landed: str  # the first stage the manifest did not list as finished, just after the kill
    missed: bool = False  # the stage finished before the trigger; killed at its end instead
    at_s: float = 0.0  # seconds into the session

    def __str__(self) -> str:
        missed = " (the stage ended first: killed there)" if self.missed else ""
        return f"{self.point}  ->  landed in {self.landed}{missed}, {self.at_s}s into the session"


def _kind(stage: str) -> str:
    return stage.split("/")[-1]


def draw_points(reference: ChaosRun, rng: random.Random) -> list[Point]:
    """One point in every kind of stage (its iteration drawn), and a second one, in the other iteration, in two
    of the stages that pay or train (SECOND_POINT)."""
    order = reference.order
    kinds = list(dict.fromkeys(_kind(s) for s in order))
    chosen = [rng.choice([s for s in order if _kind(s) == kind]) for kind in kinds]
    for kind in rng.sample(SECOND_POINT, 2):
        chosen += [s for s in order if _kind(s) == kind and s not in chosen]
    return [_draw_point(reference, stage, rng) for stage in sorted(chosen, key=order.index)]


def _draw_point(reference: ChaosRun, stage: str, rng: random.Random) -> Point:
    """A trigger inside the stage. Which triggers a stage offers depends only on what the reference run did
    (requests, rows, training steps), never on its timing, so a seed always draws the same points."""
    kind, it = _kind(stage), stage.split("/")[0]
    requests = reference.requests_per_stage[stage]
    options = []
    role = STAGE_ROLE.get(kind)
    if role and requests[role]:
        options.append(Point(stage, "request", role=role, k=rng.randint(1, requests[role])))
    if kind in ("label", "generate") and requests[role] > 1:
        journal = f"{it}/{'teacher' if kind == 'label' else 'generation'}.partial.jsonl"
        options.append(Point(stage, "lines", k=rng.randint(1, requests[role] - 1), path=journal))
    if kind == "discriminate":
        n = len(reference.rows(f"{it}/student_answers.jsonl"))
        options.append(Point(stage, "lines", k=rng.randint(1, n), path=f"{it}/student_answers.partial.jsonl"))
    if kind == "train":
        steps = json.loads((reference.dir / it / "train_metrics.json").read_text())["steps"]
        step = rng.choice(range(SAVE_STEPS, steps + 1, SAVE_STEPS))
        folder = f"{it}/checkpoints/sft/checkpoint-{step}"
        options.append(Point(stage, "file", path=f"{folder}/trainer_state.json"))  # resumes from this checkpoint
        if step > SAVE_STEPS:  # killed while the checkpoint is written: resumes from the one before
            options.append(Point(stage, "file", path=folder))
    if kind == "ingest":
        options.append(Point(stage, "file", path="@index/vectors.npy"))  # the run's own corpus index
    if kind == "pool" and it == "iter_00":
        options.append(Point(stage, "file", path="iter_00/seed_grounding.jsonl"))
    if kind == "finalize":
        options.append(Point(stage, "file", path="metrics.json"))
    if kind in ("ingest", "eval_before", "eval", "finalize") or (kind == "pool" and it == "iter_00"):
        fraction = round(rng.uniform(0.1, 0.5), 2)  # of the stage's duration in the reference run
        options.append(Point(stage, "time", fraction=fraction, seconds=fraction * reference.timings.get(stage, 0)))
    if not options:
        options.append(Point(stage, "boundary"))
    return rng.choice(options)


# one run directory, its servers, and the sessions that work on it -------------------------------
class Output:
    """Reads a session's merged stdout and stderr: the last lines, and when each stage started."""

    def __init__(self, proc: subprocess.Popen):
        self.tail: collections.deque = collections.deque(maxlen=80)
        self.started: dict[str, float] = {}
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.tail.append(line.rstrip())
            m = re.match(r"^stage (\S+)\s*$", line)
            if m:
                self.started.setdefault(m.group(1), time.monotonic())

    def text(self) -> str:
        return "\n".join(self.tail)


@dataclass
class Session:
    point: Optional[Point]
    proc: subprocess.Popen
    out: Output
    start: float = field(default_factory=time.monotonic)
    done_at_start: list = field(default_factory=list)  # stages finished before this session
    count: int = 0  # requests of the point's role counted in its stage
    kill: Optional[Kill] = None
    stragglers: bool = False  # a process of the session's group was still running after it ended


class ChaosRun:
    def __init__(self, root: Path, student: Path, order: Optional[list[str]] = None):
        self.root = Path(root)
        self.dir = self.root / "run"
        self.student = student
        self.order = order or []  # the reference run's stages, in order (for the chaos run)
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, int]] = []  # (role, stages finished when the request arrived)
        self.session: Optional[Session] = None
        self.kills: list[Kill] = []
        self.servers = {role: FakeOpenAIServer(reply=self._reply(role)) for role in ROLES}

    # the servers ------------------------------------------------------------------------------------
    def __enter__(self):
        for server in self.servers.values():
            server.start()
        return self

    def __exit__(self, *exc):
        for server in self.servers.values():
            server.stop()

    def _reply(self, role: str):
        def reply(messages):
            self._arrived(role)
            return chaos_reply(messages)

        return reply

    def _arrived(self, role: str) -> None:
        done = self.finished()
        with self.lock:
            self.arrivals.append((role, len(done)))
            s = self.session
            if s is None or s.kill is not None or s.point is None or s.point.kind != "request":
                return
            if s.point.role == role and self.current(done) == s.point.stage:
                s.count += 1
                if s.count == s.point.k:
                    self._kill(s)

    def prompts(self, role: str) -> collections.Counter:
        return collections.Counter(json.dumps(r["messages"], sort_keys=True) for r in self.servers[role].requests)

    # the run directory ------------------------------------------------------------------------------
    def manifest(self) -> dict:
        try:
            return json.loads((self.dir / "manifest.json").read_text())
        except (OSError, ValueError):
            return {"stages": {}}

    def finished(self) -> list[str]:
        return list(self.manifest()["stages"])

    def current(self, done: list[str]) -> str:
        return next((s for s in self.order if s not in done), "(after the last stage)")

    def rows(self, rel: str) -> list[dict]:
        return [_stable(json.loads(x)) for x in (self.dir / rel).read_text().splitlines()]

    def settings(self) -> list[str]:
        s = [
            "adversarial.iterations=2",
            "forgetting.enabled=false",
            "models.student.provider=hf",
            f"models.student.name_or_path={self.student}",
            "eval.max_new_tokens=16",
            "train.max_seq_length=128",
            f"train.save_steps={SAVE_STEPS}",
            f"knowledge.index_dir={self.root / 'index'}",
        ]
        for role, server in self.servers.items():
            s += [
                f"models.{role}.provider=openai",
                f"models.{role}.base_url={server.base_url}",
                f"models.{role}.model={role}-model",
                f"models.{role}.cache=false",
                f"models.{role}.concurrency={CONCURRENCY}",
            ]
        return ["--domain", "tiny", "--pack-path", str(TINY_PACKS), "--preset", "smoke"] + [
            a for x in s for a in ("--set", x)
        ]

    # reference facts -------------------------------------------------------------------------------
    @property
    def timings(self) -> dict[str, float]:
        return self.manifest().get("timings", {})

    @property
    def requests_per_stage(self) -> dict[str, collections.Counter]:
        order = self.finished()
        out = {s: collections.Counter() for s in order}
        for role, index in self.arrivals:
            out[order[index]][role] += 1
        return out

    # sessions ----------------------------------------------------------------------------------------
    def run_session(self, args: list[str], point: Optional[Point]) -> tuple[int, Session]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            distill_cmd() + args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        session = Session(point, proc, Output(proc), done_at_start=self.finished())
        with self.lock:
            self.session = session
        try:
            while proc.poll() is None and session.kill is None:
                if point is not None:
                    self._watch(session)
                if time.monotonic() - session.start > SESSION_TIMEOUT_S:
                    self._signal(proc)
                    raise AssertionError(
                        f"a session ran {SESSION_TIMEOUT_S}s without finishing (kills so far: {self.kills}):\n"
                        + session.out.text()
                    )
                time.sleep(0.02)
            rc = proc.wait(timeout=60)
        finally:
            with self.lock:
                self.session = None
            session.stragglers = self._stop_group(proc)
        session.out.thread.join(timeout=10)
        return rc, session

    @staticmethod
    def _stop_group(proc: subprocess.Popen) -> bool:
        """Whether a child of the session outlived it (it could hold the run's lock or keep writing); stop it."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _watch(self, s: Session) -> None:
        p = s.point
        started = s.out.started.get(p.stage)
        done = self.finished()
        fire = False
        if p.kind == "boundary":  # as soon as the stage starts, or the one before it is recorded in this session
            before = self.order[self.order.index(p.stage) - 1]
            fire = started is not None or (before in done and before not in s.done_at_start)
        elif p.stage in done:
            fire = "missed"
        elif started is None or p.kind == "request":
            return
        elif p.kind == "time":
            fire = time.monotonic() - started >= p.seconds
        elif p.kind == "file":
            fire = self._path(p.path).exists()
        elif p.kind == "lines":
            path = self._path(p.path)
            fire = path.exists() and len(path.read_bytes().splitlines()) >= p.k
        if fire:
            with self.lock:
                if s.kill is None:
                    self._kill(s, missed=fire == "missed")

    def _path(self, rel: str) -> Path:
        return self.root / "index" / rel[len("@index/") :] if rel.startswith("@index/") else self.dir / rel

    def _kill(self, s: Session, missed: bool = False) -> None:
        """SIGKILL the session's process (called with self.lock held)."""
        self._signal(s.proc)
        s.kill = Kill(s.point, self.current(self.finished()), missed, round(time.monotonic() - s.start, 1))
        self.kills.append(s.kill)

    @staticmethod
    def _signal(proc: subprocess.Popen) -> None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stable(obj):
    """The row without fields that differ from run to run by nature (clock times)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _artifact(run: ChaosRun, rel: str):
    path = run.dir / rel
    if not path.exists():
        return None
    return run.rows(rel) if rel.endswith(".jsonl") else _stable(json.loads(path.read_text()))


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _files(run: ChaosRun) -> set[str]:
    return {str(p.relative_to(run.dir)) for p in run.dir.rglob("*") if p.is_file() and p.name != ".lock"}


def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path):
    """About 4 minutes on a busy 2-core CPU: the reference run (~75 s), then 14 killed sessions and the last."""
    begun = time.monotonic()
    student = tiny_model_dir(tmp_path / "student")

    # the uninterrupted reference run, with its own servers
    with ChaosRun(tmp_path / "reference", student) as reference:
        rc, s = reference.run_session(["run", *reference.settings(), "--run-dir", str(reference.dir)], None)
        assert rc == 0, s.out.text()
        reference.order = reference.finished()
    points = draw_points(reference, random.Random(SEED))
    assert len(points) >= 12
    print("\nkill points (random.Random(0)):\n  " + "\n  ".join(map(str, points)))

    # the same run, killed at every point and resumed until it finishes
    with ChaosRun(tmp_path / "chaos", student, order=reference.order) as chaos:
        args = ["run", *chaos.settings(), "--run-dir", str(chaos.dir)]
        for point in points:
            rc, s = chaos.run_session(args, point)
            assert s.kill is not None, (
                f"the session meant to be killed at [{point}] ended by itself with exit code {rc} "
                f"(kills before it: {[str(k) for k in chaos.kills]}):\n{s.out.text()}"
            )
            assert not s.stragglers, f"a child process outlived the session killed at [{point}]"
            args = ["resume", str(chaos.dir)]
        rc, s = chaos.run_session(args, None)
        assert rc == 0, f"the last resume failed (after kills {[str(k) for k in chaos.kills]}):\n{s.out.text()}"
    print("kills:\n  " + "\n  ".join(map(str, chaos.kills)))
    print(f"took {time.monotonic() - begun:.0f}s")
    report = "kills:\n" + "\n".join(map(str, chaos.kills))

    # the manifest lists every stage once, in order, and the run finished
    manifest = chaos.manifest()
    assert manifest["status"] == "finished"
    assert list(manifest["stages"]) == reference.order, report

    # the kills landed all over the run, and inside the stages that pay or train
    landed = {_kind(k.landed) for k in chaos.kills}
    assert {"label", "train", "discriminate", "generate"} <= landed, report
    assert len(landed) >= 9, report

    # every artifact holds the same rows as the uninterrupted run's
    names = [f"iter_{k:02d}/{n}" for k in (0, 1) for n in COMPARED["iteration"]]
    names += [f"iter_00/{n}" for n in COMPARED["first"]] + COMPARED["run"]
    differ = [n for n in names if _artifact(chaos, n) != _artifact(reference, n)]
    assert not differ, f"artifacts differ from the uninterrupted run's: {differ}\n{report}"
    litter = sorted(f for f in _files(chaos) if f.endswith(".tmp"))
    assert {f for f in _files(chaos) if f not in litter} == _files(reference), (
        f"only in the chaos run: {sorted(_files(chaos) - _files(reference) - set(litter))}; "
        f"only in the reference: {sorted(_files(reference) - _files(chaos))}"
    )

    # training resumed from its checkpoints gives the same student (and so the same answers above)
    resumed = []
    for k in (0, 1):
        train = [json.loads((r.dir / f"iter_{k:02d}/train_metrics.json").read_text()) for r in (chaos, reference)]
        resumed.append(train[0]["stages"]["sft"]["resumed_from_checkpoint"])
        losses = [[h["loss"] for h in t["loss_history"]] for t in train]
        assert losses[0] == losses[1], f"iter_{k:02d} loss curves differ: {losses}\n{report}"
        ours, theirs = (_weights(r.dir / f"iter_{k:02d}/student") for r in (chaos, reference))
        assert ours.keys() == theirs.keys()
        assert all(ours[n].equal(theirs[n]) for n in ours), f"iter_{k:02d}: the resumed training gave other weights"
    print(f"training resumed from {resumed}")
    assert any(resumed), f"no training resumed from a checkpoint\n{report}"

    # no reply was paid for twice, beyond the requests in flight at each kill; the budget counted every call
    for role in ROLES:
        paid, needed = chaos.prompts(role), reference.prompts(role)
        twice = sum((paid - needed).values())
        kills = sum(STAGE_ROLE.get(_kind(k.landed)) == role for k in chaos.kills)
        budget = json.loads((chaos.dir / "budget" / f"{role}.json").read_text())
        print(
            f"{role}: {sum(paid.values())} requests ({sum(needed.values())} uninterrupted), {twice} paid twice, "
            f"{kills} kills in its stages; budget counted {budget['calls']} calls"
        )
        assert not needed - paid, f"{role}: the chaos run never asked {sum((needed - paid).values())} prompts"
        assert twice <= kills * CONCURRENCY, (
            f"{role}: {twice} requests paid twice, more than {kills} kills in its stages x {CONCURRENCY} in flight\n"
            + report
        )
        assert budget["calls"] >= sum(paid.values()), f"{role}: the budget counted fewer calls than were sent"

    # a kill during an atomic write leaves its temp file behind; the resumed run must not keep it for ever
    assert not litter, f"temp files left by killed sessions in the finished run directory: {litter}\n{report}"
