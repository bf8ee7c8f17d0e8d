"""Talk to a run's student: load it with the pack's system prompt, stream its answers, and the terminal
chat of `distill chat RUN_DIR`.

`load_run_student(run_dir)` reads the run's config.yaml (the resolved recipe), finds the pack's system
prompt, and loads `RUN_DIR/student/` through `load_student_model` (full weights or a LoRA adapter),
wrapped in the project's `LocalChatModel` for its chat template. `Generation` runs one answer on a helper
thread with transformers' `TextIteratorStreamer`, so the text can be read as it is made; the HTTP server
(sdk/serve.py) and the terminal chat both answer through it, so a streamed and a non-streamed answer are
the same text.

The terminal chat keeps the conversation and answers token by token. Its commands:

    /teacher   ask the run's teacher the last question (same conversation), and print its answer, labelled
    /reset     forget the conversation (the system prompt stays)
    /exit      quit (so does Ctrl-D); Ctrl-C during an answer stops that answer, not the chat
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from sdk.config import Recipe
from sdk.errors import DistilleryError
from sdk.models.local import LocalChatModel, sampling_kwargs

Messages = list[dict]
DEFAULT_MAX_TOKENS = 512


class ContextTooLong(DistilleryError):
    """The conversation leaves no room for an answer in the model's context window."""


# ---------------------------------------------------------------------------------------------
# sampling and stop strings


@dataclass(frozen=True)
class Sampling:
    """How one answer is generated: OpenAI's request fields, resolved against the run's defaults."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    top_logprobs: Optional[int] = None  # None: no logprobs; k >= 0: the chosen token's and k alternatives


@dataclass
class Reply:
    """A finished answer, with what an OpenAI response reports about it."""

    text: str
    finish_reason: str  # "stop" (end of turn, a stop string, or stopped early) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int
    logprobs: Optional[list[dict]] = None  # one entry per answer token, when asked for


class StopScanner:
    """Cuts streamed text at the first stop string, without ever sending part of one.

    `feed(piece)` returns the text that is safe to send now: it holds back any tail that could still
    become a stop string, and trailing whitespace (which the end of the answer drops). Leading whitespace
    is dropped too, so an answer never starts with the newline a chat template leaves. `finish()` returns
    what is held back once generation has ended; after a stop string it returns nothing.
    """

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops = tuple(s for s in stops if s)
        self.buffer = ""
        self.started = False  # the first non-whitespace character has been seen
        self.stopped = False  # a stop string was found: the answer ends before it

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        if not self.started:
            self.buffer = self.buffer.lstrip()
            self.started = bool(self.buffer)
        cuts = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            safe, self.buffer = self.buffer[: min(cuts)].rstrip(), ""
            return safe
        keep = 0  # the longest tail that a stop string starts with waits for more text
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), keep, -1):
                if stop.startswith(self.buffer[-n:]):
                    keep = n
                    break
        safe = self.buffer[: len(self.buffer) - keep].rstrip()  # and so does the whitespace before it
        self.buffer = self.buffer[len(safe) :]
        return safe

    def finish(self) -> str:
        rest, self.buffer = ("" if self.stopped else self.buffer.rstrip()), ""
        return rest


# ---------------------------------------------------------------------------------------------
# one answer, streamed


class _Cancelled:
    """A stopping criterion that ends generation once `event` is set (a stop string, Ctrl-C, a closed client)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Generation:
    """One answer of a local chat model, generated on a helper thread and read as it is made.

    Iterate it for the text, piece by piece (transformers' TextIteratorStreamer decodes whole words);
    afterwards `reply` holds the finish reason, the token counts and, when asked for, the logprobs.
    Leaving the loop early (a closed client, Ctrl-C) stops the generation within one token.
    """

    def __init__(self, chat: LocalChatModel, prompt_ids: list[int], sampling: Sampling):
        from transformers import TextIteratorStreamer

        self.chat, self.prompt_ids, self.sampling = chat, prompt_ids, sampling
        self.streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.cancelled = threading.Event()
        self.reply: Optional[Reply] = None
        self._output = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._generate, name="distill-generate", daemon=True)

    def _generate(self) -> None:
        import torch
        from transformers import StoppingCriteriaList

        s, tok = self.sampling, self.chat.tokenizer
        input_ids = torch.tensor([self.prompt_ids], device=self.chat.device)
        try:
            with torch.inference_mode():
                self._output = self.chat.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=s.max_tokens,
                    **sampling_kwargs(s.temperature, s.top_p, s.repetition_penalty, tok.pad_token_id),
                    streamer=self.streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(self.cancelled)]),
                    return_dict_in_generate=True,
                    output_logits=s.top_logprobs is not None,
                )
        except BaseException as exc:  # handed to the reader, who would otherwise wait for text forever
            self._error = exc
            self.streamer.end()

    def __iter__(self) -> Iterator[str]:
        if self.sampling.seed is not None:
            import torch

            torch.manual_seed(self.sampling.seed)  # the thread samples from the same global generator
        scanner = StopScanner(self.sampling.stop)
        text: list[str] = []
        self._thread.start()
        try:
            for piece in self.streamer:
                safe = scanner.feed(piece)
                if safe:
                    text.append(safe)
                    yield safe
                if scanner.stopped:
                    break
            tail = scanner.finish()
            if tail:
                text.append(tail)
                yield tail
        finally:
            self.cancelled.set()  # a no-op when generation has ended; otherwise it stops at the next token
            self._thread.join()
            if self._error is None:
                self.reply = self._reply("".join(text), scanner.stopped)
        if self._error is not None:
            raise self._error

    def _reply(self, text: str, hit_stop: bool) -> Reply:
        new_ids = self._output.sequences[0, len(self.prompt_ids) :].tolist()
        eos = self.chat.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) | {self.chat.tokenizer.eos_token_id}
        ended = hit_stop or (bool(new_ids) and new_ids[-1] in eos)
        finish = "length" if not ended and len(new_ids) >= self.sampling.max_tokens else "stop"
        logprobs = self._logprobs(new_ids, text) if self.sampling.top_logprobs is not None else None
        return Reply(text, finish, len(self.prompt_ids), len(new_ids), logprobs)

    def _logprobs(self, new_ids: list[int], text: str) -> list[dict]:
        """OpenAI's `logprobs.content`: each answer token's log-probability under the model (its raw
        logits, before temperature and top_p) and the `top_logprobs` most likely alternatives."""
        import torch

        tok = self.chat.tokenizer
        decoded = tok.decode(new_ids, skip_special_tokens=True)
        start = len(decoded) - len(decoded.lstrip())
        end = start + len(text)  # the answer's span in the decoded text (stop strings cut it short)
        special = set(tok.all_special_ids)
        entries, before = [], 0  # before: length of the decoded text ahead of token t
        for t, token_id in enumerate(new_ids):
            after = len(tok.decode(new_ids[: t + 1], skip_special_tokens=True))
            span, before = (before, after), after
            if token_id in special or span[1] <= start or span[0] >= end:
                continue  # an end-of-turn token, stripped whitespace, or text past a stop string
            lp = torch.log_softmax(self._output.logits[t][0].float(), dim=-1)  # (V,)
            top = torch.topk(lp, self.sampling.top_logprobs) if self.sampling.top_logprobs else None
            entries.append(
                dict(
                    _token_entry(tok, token_id, lp[token_id].item()),
                    top_logprobs=[_token_entry(tok, i, v) for v, i in zip(top.values.tolist(), top.indices.tolist())]
                    if top is not None
                    else [],
                )
            )
        return entries


def _token_entry(tok, token_id: int, logprob: float) -> dict:
    text = tok.decode([token_id])
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode("utf-8"))}


# ---------------------------------------------------------------------------------------------
# the run's student


@dataclass
class RunStudent:
    """A run's student, ready to answer: the model, the pack's system prompt and the run's defaults."""

    chat: LocalChatModel
    system_prompt: Optional[str]  # the pack's; None when the pack could not be found
    model_name: str  # e.g. distillery-medicine-student
    recipe: Recipe
    domain: str

    def with_system_prompt(self, messages: Messages) -> Messages:
        """The conversation as the student was trained on it: the pack's system prompt first, unless one is given."""
        if self.system_prompt is None or any(m["role"] == "system" for m in messages):
            return list(messages)
        return [{"role": "system", "content": self.system_prompt}, *messages]

    def default_sampling(self, max_tokens: int = DEFAULT_MAX_TOKENS) -> Sampling:
        """The run's own generation settings for the student (greedy, with its repetition penalty)."""
        g = self.recipe.models.student.generation
        return Sampling(max_tokens, g.temperature, g.top_p, g.repetition_penalty)

    def context_window(self) -> Optional[int]:
        return getattr(self.chat.model.config, "max_position_embeddings", None)

    def prepare(self, messages: Messages, sampling: Sampling) -> tuple[list[int], Sampling]:
        """The prompt's token ids, and the sampling with max_tokens cut to what the context window has left."""
        text = self.chat.render(self.with_system_prompt(messages))
        ids = self.chat.tokenizer(text, add_special_tokens=False)["input_ids"]
        window = self.context_window()
        if window is not None:
            room = window - len(ids)
            if room < 1:
                raise ContextTooLong(
                    f"the conversation is {len(ids)} tokens; the model's context window is {window} tokens"
                )
            if sampling.max_tokens > room:
                sampling = replace(sampling, max_tokens=room)
        return ids, sampling

    def stream(self, messages: Messages, sampling: Sampling) -> Generation:
        """An answer to read piece by piece (iterate it); `.reply` once it is read."""
        ids, sampling = self.prepare(messages, sampling)
        return Generation(self.chat, ids, sampling)

    def complete(self, messages: Messages, sampling: Sampling) -> Reply:
        generation = self.stream(messages, sampling)
        for _ in generation:
            pass
        return generation.reply


def run_pack(recipe: Recipe):
    """The run's pack (its system prompt is the one the student was trained with), or None with a warning."""
    from sdk.packs import resolve_pack
    from sdk.progress import log

    if not recipe.domain:
        log("[yellow]the run names no domain: answering without a system prompt[/yellow]")
        return None
    try:
        return resolve_pack(recipe.domain, recipe.pack_paths)
    except DistilleryError as exc:
        log(f"[yellow]cannot load the run's pack ({exc}): answering without its system prompt[/yellow]")
        return None


def load_run_student(run_dir: str | Path, model_name: Optional[str] = None) -> RunStudent:
    """The student of a run directory (any shape: full weights, merged or a LoRA adapter), ready to chat."""
    from sdk.api import load_run_recipe
    from sdk.models.student import load_student_model
    from sdk.progress import quiet_libraries
    from sdk.store import RunLayout

    recipe = load_run_recipe(run_dir)
    pack = run_pack(recipe)
    domain = pack.name if pack is not None else recipe.domain or "run"
    quiet_libraries()
    model, tokenizer = load_student_model(RunLayout(Path(run_dir)).student)
    name = model_name or f"distillery-{domain}-student"
    chat = LocalChatModel(model, tokenizer, name, recipe.models.student.generation)
    return RunStudent(chat, pack.spec.system_prompt if pack is not None else None, name, recipe, domain)


# ---------------------------------------------------------------------------------------------
# the terminal chat


@contextlib.contextmanager
def _quiet_progress():
    """No progress bar for a single teacher answer in the middle of a chat."""
    from sdk.progress import console

    quiet, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = quiet


class RunTeacher:
    """The run's teacher (config.yaml's `models.teacher`), built on first use the way the pipeline builds
    every role (`load_chat_model`), so a local model and an OpenAI-compatible endpoint both work."""

    def __init__(self, recipe: Recipe):
        from sdk.models import describe

        self.spec, self.models = recipe.models.teacher, recipe.models
        self.label = f"teacher ({describe(self.spec, self.models)})"
        self._model = None
        self._broken: Optional[str] = None  # why it could not be built; it is not tried again

    def answer(self, messages: Messages) -> str:
        """The teacher's answer; a DistilleryError with the reason when there is none."""
        from sdk.models import load_chat_model

        if self._broken is not None:
            raise DistilleryError(self._broken)
        if self._model is None:
            try:
                self._model = load_chat_model(self.spec, self.models)
            except Exception as exc:  # any reason at all: the chat goes on without the teacher
                self._broken = f"cannot build it: {_one_line(exc)}"
                raise DistilleryError(self._broken) from None
        try:
            with _quiet_progress():
                out = self._model.generate([messages], return_errors=True)[0]
        except Exception as exc:
            raise DistilleryError(_one_line(exc)) from None
        if isinstance(out, BaseException):
            raise DistilleryError(_one_line(out))
        return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    return detail if isinstance(exc, DistilleryError) else f"{type(exc).__name__}: {detail}".rstrip(": ")


HELP = (
    "commands: /teacher asks the run's teacher the last question, /reset clears the conversation, "
    "/exit quits (or Ctrl-D); Ctrl-C stops an answer"
)


@dataclass
class TerminalChat:
    """The loop of `distill chat`: read a line, answer it with the student (streamed), or run a command."""

    student: RunStudent
    teacher: RunTeacher
    sampling: Sampling
    out: object = field(default=sys.stdout)
    history: Messages = field(default_factory=list)  # user and assistant turns; the system prompt is added per answer

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def run(self) -> None:
        """Until /exit or end of input. Ctrl-C at the prompt only reminds how to quit."""
        system = f"the {self.student.domain} pack's system prompt" if self.student.system_prompt else "no system prompt"
        self.write(f"chatting with {self.student.model_name} ({system})\n{HELP}\n")
        while True:
            try:
                line = input("you> ")
            except EOFError:
                self.write("\n")
                return
            except KeyboardInterrupt:
                self.write("\n(/exit or Ctrl-D quits)\n")
                continue
            if not self.handle(line.strip()):
                return

    def handle(self, line: str) -> bool:
        """Act on one line; False when the chat should end."""
        if not line:
            return True
        if line in ("/exit", "/quit"):
            return False
        if line == "/reset":
            self.history.clear()
            self.write("(conversation cleared)\n")
        elif line == "/teacher":
            self.ask_teacher()
        elif line.startswith("/"):
            self.write(f"unknown command {line.split()[0]}; {HELP}\n")
        else:
            self.ask_student(line)
        return True

    def ask_student(self, question: str) -> None:
        """Stream the student's answer; a stopped answer stays in the conversation as far as it got."""
        self.history.append({"role": "user", "content": question})
        while True:
            try:
                generation = self.student.stream(self.history, self.sampling)
                break
            except ContextTooLong:
                if len(self.history) <= 1:
                    self.history.clear()
                    self.write("(the question alone is longer than the model's context window)\n")
                    return
                del self.history[:2]  # the oldest question and its answer make room
                self.write("(the oldest turn was dropped to fit the context window)\n")
        self.write("student> ")
        pieces: list[str] = []
        stream = iter(generation)
        try:
            for piece in stream:
                pieces.append(piece)
                self.write(piece)
            self.write(" [max tokens]\n" if generation.reply.finish_reason == "length" else "\n")
        except KeyboardInterrupt:
            self.write(" [stopped]\n")
        finally:
            stream.close()  # stops the generation thread, wherever Ctrl-C landed
        self.history.append({"role": "assistant", "content": "".join(pieces)})

    def last_question(self) -> Optional[Messages]:
        """The conversation up to and including the last question, as the student saw it."""
        for end in range(len(self.history), 0, -1):
            if self.history[end - 1]["role"] == "user":
                return self.student.with_system_prompt(self.history[:end])
        return None

    def ask_teacher(self) -> None:
        messages = self.last_question()
        if messages is None:
            self.write("ask a question first; /teacher then asks the teacher the same\n")
            return
        self.write(f"{self.teacher.label}> ")  # at once: an endpoint may take a while
        try:
            answer = self.teacher.answer(messages)
        except KeyboardInterrupt:
            answer = "[stopped]"
        except DistilleryError as exc:
            answer = f"[unavailable: {exc}]"
        self.write(f"{answer}\n")


def own_ctrl_c() -> None:
    """Make Ctrl-C raise KeyboardInterrupt here, whatever this process inherited: a parent can leave SIGINT
    ignored or blocked, both survive exec, and then Ctrl-C would neither stop an answer nor reach the prompt.
    Called before the model loads, so every thread started later inherits the unblocked mask."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run_chat(run_dir: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
    """`distill chat RUN_DIR`: a terminal chat with the run's student (see the module docstring)."""
    own_ctrl_c()
    student = load_run_student(run_dir)
    TerminalChat(student, RunTeacher(student.recipe), student.default_sampling(max_tokens)).run()
