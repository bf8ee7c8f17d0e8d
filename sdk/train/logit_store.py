"""A compact on-disk store of the teacher's top-k next-token distribution, for offline white-box KD.

The teacher's forward pass is paid once (fill_from_local_teacher) and training reads the store
(sdk/train/kd_store.py) without ever loading the teacher, as DistillKit does. For every answer token
of a labelled row the store keeps

    token           the answer token (int32), to check that training sees the same tokens
    topk_ids        the teacher's k most likely next tokens at the position that predicts it (int32)
    topk_logprobs   their log-probabilities (float16)
    tail_logprob    log of the probability outside the top-k, log(1 - sum_i exp(topk_logprobs_i)) (float16)

Layout of the folder (STORE_DIR, `teacher_logits/`, beside teacher.jsonl):

    meta.json          {"version", "top_k", "record": the numpy dtype of one token}
    shard-00000.npy    a 1-d numpy array of records, one per token (structured dtype, 6k + 6 bytes),
    shard-00001.npy    opened with np.load(mmap_mode="r"): reading a row touches only its pages
    index.jsonl        one line per row: {"id", "shard", "offset", "length"} (tokens in the shard), and
                       "prompt": a digest of the prompt tokens the teacher saw (prompt_digest), when known

Crash safety, in the spirit of sdk/store.py: a shard is written to a temp file, fsynced and renamed into
place, and only then are its rows appended to index.jsonl (fsynced). A kill therefore leaves at worst
a complete shard that no index line names, or a torn last index line: on open the torn line is cut off
and unreferenced shards (and temp files) are deleted, so those rows are simply filled again. One writer
at a time (the fill runs in one process); readers never write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sdk.errors import DistilleryError
from sdk.faults import atomic_section
from sdk.store import atomic_write_json, iter_jsonl

STORE_DIR = "teacher_logits"
INDEX = "index.jsonl"
META = "meta.json"
VERSION = 1
SHARD_TOKENS = 1 << 16  # tokens buffered before a shard is written (8 MiB at k = 20)
_SHARD = re.compile(r"shard-(\d+)\.npy")


def record_dtype(top_k: int) -> np.dtype:
    """One stored token: 4 + 4k + 2k + 2 bytes, packed (126 bytes at k = 20)."""
    return np.dtype(
        [
            ("token", "<i4"),
            ("topk_ids", "<i4", (top_k,)),
            ("topk_logprobs", "<f2", (top_k,)),
            ("tail_logprob", "<f2"),
        ]
    )


def tail_from_topk(topk_logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum_i exp(t_i)) per row, stably: log1mexp of the top-k's logsumexp (Maechler 2012).

    For callers that only have the top-k (an endpoint's logprobs); fill_from_local_teacher, which has the
    full distribution, sums the tail's probabilities directly instead, with no cancellation.
    """
    t = np.asarray(topk_logprobs, dtype=np.float64)
    peak = t.max(axis=-1, keepdims=True)
    mass = np.minimum(peak[..., 0] + np.log(np.exp(t - peak).sum(axis=-1)), 0.0)  # log sum_i exp(t_i) <= 0
    with np.errstate(divide="ignore"):  # a top-k that holds all the mass leaves log 0 = -inf
        return np.where(mass > -np.log(2), np.log(-np.expm1(mass)), np.log1p(-np.exp(mass)))


def prompt_digest(prompt_ids: Sequence[int]) -> str:
    """A short fingerprint of the prompt tokens the teacher was conditioned on (not stored themselves)."""
    return hashlib.sha1(np.asarray(prompt_ids, dtype="<i4").tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class StoredRow:
    """One row's answer tokens and the teacher's top-k at each (views on the memory-mapped shard)."""

    token_ids: np.ndarray  # (n,) int32
    topk_ids: np.ndarray  # (n, k) int32
    topk_logprobs: np.ndarray  # (n, k) float16
    tail_logprob: np.ndarray  # (n,) float16
    prompt: Optional[str] = None  # prompt_digest of the tokens before the answer, when the writer gave them

    def __len__(self) -> int:
        return len(self.token_ids)


class LogitStore:
    """The teacher's top-k per answer token, by row id: `add` rows, `flush` them to a shard, `get` them back.

    LogitStore(folder, top_k) creates or opens a store; LogitStore(folder) opens an existing one.
    Rows already stored are kept (`add` of a stored row is a no-op returning False), so a resumed fill
    pays only for the rest. Use it as a context manager, or call close(), to write the last shard.
    """

    def __init__(self, folder: Path, top_k: Optional[int] = None, shard_tokens: int = SHARD_TOKENS):
        self.folder = Path(folder)
        self.top_k = self._open_meta(top_k)
        self.dtype = record_dtype(self.top_k)
        self.shard_tokens = shard_tokens
        self._index: dict[str, tuple[str, int, int]] = {}
        self._prompts: dict[str, str] = {}  # row id -> prompt_digest
        self._pending: dict[str, np.ndarray] = {}
        self._pending_tokens = 0
        self._shards: dict[str, np.ndarray] = {}
        self._load_index()
        self._next_shard = 1 + max((int(_SHARD.fullmatch(s)[1]) for s in self._shard_names()), default=-1)

    # opening -----------------------------------------------------------------------------------
    def _open_meta(self, top_k: Optional[int]) -> int:
        meta_file = self.folder / META
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if meta.get("version") != VERSION:
                raise DistilleryError(f"{meta_file}: store version {meta.get('version')}, this SDK reads {VERSION}")
            if top_k is not None and top_k != meta["top_k"]:
                raise DistilleryError(
                    f"the teacher logit store {self.folder} holds the top-{meta['top_k']} tokens, not the top-{top_k}: "
                    f"use top_k {meta['top_k']}, or delete the folder to fill it again"
                )
            return int(meta["top_k"])
        if top_k is None:
            raise DistilleryError(f"no teacher logit store in {self.folder} (no {META}): fill it first")
        if top_k < 1:
            raise DistilleryError(f"top_k must be at least 1, got {top_k}")
        atomic_write_json(meta_file, {"version": VERSION, "top_k": top_k, "record": record_dtype(top_k).descr})
        return top_k

    def _shard_names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if _SHARD.fullmatch(p.name))

    def _load_index(self) -> None:
        index = self.folder / INDEX
        if index.is_file():
            data = index.read_bytes()
            if data and not data.endswith(b"\n"):  # a kill mid-append: cut the torn line, or the next append joins it
                os.truncate(index, data.rfind(b"\n") + 1)
            present = set(self._shard_names())
            for entry in iter_jsonl(index, bad_lines=[]):
                if isinstance(entry, dict) and entry.get("shard") in present:
                    self._index[entry["id"]] = (entry["shard"], int(entry["offset"]), int(entry["length"]))
                    if entry.get("prompt"):
                        self._prompts[entry["id"]] = entry["prompt"]
        referenced = {shard for shard, _, _ in self._index.values()}
        for path in self.folder.iterdir():  # complete shards no index line names, and temp files: a kill's leftovers
            if (_SHARD.fullmatch(path.name) and path.name not in referenced) or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    # rows --------------------------------------------------------------------------------------
    def has(self, row_id: str) -> bool:
        row_id = str(row_id)  # ids are strings in the index (JSON keys)
        return row_id in self._index or row_id in self._pending

    __contains__ = has

    def __len__(self) -> int:
        return len(self._index) + len(self._pending)

    def row_ids(self) -> list[str]:
        return [*self._index, *self._pending]

    def add(self, row_id: str, token_ids, topk_ids, topk_logprobs, tail_logprob) -> bool:
        """Buffer one row (n answer tokens): token_ids (n,), topk_ids (n, k), topk_logprobs (n, k), tail_logprob (n,).

        Returns False, storing nothing, when the row is already stored. A shard is written once
        shard_tokens tokens are buffered.
        """
        return self.add_row(row_id, StoredRow(token_ids, topk_ids, topk_logprobs, tail_logprob))

    def add_row(self, row_id: str, row: StoredRow, prompt_ids: Optional[Sequence[int]] = None) -> bool:
        """add(), with the prompt tokens the teacher saw (or the row's digest of them): the digest is indexed, so
        training can check them too."""
        row_id = str(row_id)
        if self.has(row_id):
            return False
        token_ids = np.asarray(row.token_ids).reshape(-1)
        n, k = len(token_ids), self.top_k
        topk_ids, topk_logprobs = np.asarray(row.topk_ids), np.asarray(row.topk_logprobs)
        tail_logprob = np.asarray(row.tail_logprob).reshape(-1)
        if topk_ids.shape != (n, k) or topk_logprobs.shape != (n, k) or tail_logprob.shape != (n,):
            raise DistilleryError(
                f"row {row_id!r}: expected {n} tokens with top-{k} ids and log-probs (shapes ({n}, {k})) and {n} tail "
                f"log-probs, got {topk_ids.shape}, {topk_logprobs.shape} and {tail_logprob.shape}"
            )
        records = np.empty(n, dtype=self.dtype)
        records["token"], records["topk_ids"] = token_ids, topk_ids
        records["topk_logprobs"], records["tail_logprob"] = topk_logprobs, tail_logprob
        self._pending[row_id] = records
        self._pending_tokens += n
        if prompt_ids is not None or row.prompt is not None:
            self._prompts[row_id] = prompt_digest(prompt_ids) if prompt_ids is not None else row.prompt
        if self._pending_tokens >= self.shard_tokens:
            self.flush()
        return True

    def get(self, row_id: str) -> StoredRow:
        """The row's tokens and top-k; raises KeyError when the row is not stored."""
        row_id = str(row_id)
        if row_id in self._pending:
            records = self._pending[row_id]
        else:
            shard, offset, length = self._index[row_id]
            if shard not in self._shards:
                self._shards[shard] = np.load(self.folder / shard, mmap_mode="r")
            records = self._shards[shard][offset : offset + length]
        fields = (records[name] for name in ("token", "topk_ids", "topk_logprobs", "tail_logprob"))
        return StoredRow(*fields, prompt=self._prompts.get(row_id))

    # writing -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the buffered rows as one shard, then name them in the index (in that order: see the module doc)."""
        if not self._pending:
            return
        name = f"shard-{self._next_shard:05d}.npy"
        entries, offset = [], 0
        for row_id, records in self._pending.items():
            entry = {"id": row_id, "shard": name, "offset": offset, "length": len(records)}
            entries.append(entry | ({"prompt": self._prompts[row_id]} if row_id in self._prompts else {}))
            offset += len(records)
        data = np.concatenate(list(self._pending.values())) if offset else np.empty(0, dtype=self.dtype)
        with atomic_section():
            self._write_shard(name, data)
            self._append_index(entries)
        self._next_shard += 1
        for e in entries:
            self._index[e["id"]] = (name, e["offset"], e["length"])
        self._pending.clear()
        self._pending_tokens = 0

    def _write_shard(self, name: str, data: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, data, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.folder)

    def _append_index(self, entries: Iterable[dict]) -> None:
        with open(self.folder / INDEX, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        self.flush()
        self._shards.clear()

    def __enter__(self) -> LogitStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # the buffered rows are complete: keep them even when the fill stops early

    # size --------------------------------------------------------------------------------------
    @property
    def bytes_per_token(self) -> int:
        """Bytes of one stored token in a shard: 4 (token) + 4k (ids) + 2k (log-probs) + 2 (tail)."""
        return self.dtype.itemsize

    def stats(self) -> dict:
        """Rows, tokens and the size on disk (shards, index and meta), per token too."""
        tokens = sum(length for _, _, length in self._index.values()) + self._pending_tokens
        disk = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {
            "rows": len(self),
            "tokens": tokens,
            "top_k": self.top_k,
            "bytes_per_token": self.bytes_per_token,
            "disk_bytes": disk,
            "disk_bytes_per_token": round(disk / tokens, 1) if tokens else None,
        }


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------------
# filling the store from a local teacher


@dataclass(frozen=True)
class FillSettings:
    batch_size: int = 4
    max_length: Optional[int] = None  # prompt + answer tokens scored per row (None: all); keep >= train.max_seq_length


def completion_tokens(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], int]:
    """(prompt + completion token ids, prompt length) exactly as TRL's SFTTrainer tokenizes a conversational
    prompt-completion example: the chat template applied to the prompt (with the generation prompt) and to
    prompt + completion, the completion starting where the two diverge (trl.data_utils.common_prefix_length).
    For SmolLM2 the completion is the answer's tokens followed by `<|im_end|>` and a newline."""
    from trl.data_utils import common_prefix_length

    def ids(messages: list[dict], **kwargs) -> list[int]:
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])

    prompt_ids = ids(prompt, add_generation_prompt=True)
    full = ids(prompt + completion)
    return full, common_prefix_length(prompt_ids, full)


def fill_from_local_teacher(
    store: LogitStore, teacher_model, tokenizer, rows: Sequence[dict], system_prompt: str = "", settings=None
) -> dict:
    """One teacher forward pass over each row's chat-rendered prompt + answer; store the top-k at every answer
    position (the logits at position t predict token t + 1). Rows already in the store are skipped.

    rows: teacher.jsonl rows ({"id", "instruction", "answer"}), rendered as sft_dataset renders them with
    system_prompt, and tokenized as SFTTrainer tokenizes them (completion_tokens), so the stored tokens are the
    completion tokens StoreKDTrainer sees. The tokenizer must be the student's (KD needs one vocabulary).
    Returns a summary: rows stored now, skipped (already stored or without answer tokens), tokens, bytes per token.
    """
    import torch

    settings = settings or FillSettings()
    start = time.perf_counter()
    from sdk.train.sft import sft_dataset

    fresh = list({str(row["id"]): row for row in rows if row.get("answer") and not store.has(row["id"])}.values())
    skipped = len(rows) - len(fresh)
    todo = []
    for row, example in zip(fresh, sft_dataset(fresh, system_prompt) if fresh else []):
        full, prompt_len = completion_tokens(tokenizer, example["prompt"], example["completion"])
        full = full[: settings.max_length] if settings.max_length else full
        if prompt_len < 1 or prompt_len >= len(full):  # no prompt token to predict from, or no answer token left
            skipped += 1
            continue
        todo.append((str(row["id"]), full, prompt_len))
    device = next(teacher_model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width, k, tokens = len(tokenizer), store.top_k, 0
    for begin in range(0, len(todo), settings.batch_size):
        batch = todo[begin : begin + settings.batch_size]
        longest = max(len(full) for _, full, _ in batch)
        ids = torch.tensor([full + [pad] * (longest - len(full)) for _, full, _ in batch], device=device)
        attention = torch.tensor([[1] * len(full) + [0] * (longest - len(full)) for _, full, _ in batch], device=device)
        with torch.inference_mode():
            logits = teacher_model(input_ids=ids, attention_mask=attention).logits
        vocab = min(width, logits.shape[-1])  # a model may pad its vocabulary; the tokenizer's ids are the real ones
        if k > vocab:
            raise DistilleryError(f"top_k {k} exceeds the vocabulary ({vocab} tokens)")
        for j, (row_id, full, prompt_len) in enumerate(batch):
            logp = torch.log_softmax(logits[j, prompt_len - 1 : len(full) - 1, :vocab].float(), dim=-1)
            values, indices = logp.topk(k, dim=-1)
            # the tail's log-mass summed over its own tokens: log(1 - sum exp(top-k)) without the cancellation
            tail = torch.logsumexp(logp.scatter(-1, indices, float("-inf")), dim=-1)
            stored = StoredRow(full[prompt_len:], indices.int().cpu().numpy(), values.cpu().numpy(), tail.cpu().numpy())
            store.add_row(row_id, stored, prompt_ids=full[:prompt_len])
            tokens += len(full) - prompt_len
    store.flush()
    return {
        "rows": len(todo),
        "skipped": skipped,
        "tokens": tokens,
        "top_k": k,
        "bytes_per_token": store.bytes_per_token,
        "runtime_s": round(time.perf_counter() - start, 1),
    }
