"""The teacher's top-k from an endpoint's log-probabilities, for the teacher logit store (sdk/train/logit_store.py).

An OpenAI-compatible server asked for `logprobs: true, top_logprobs: k` returns, per generated token, the
token, its log-probability and the k most likely tokens with theirs. vLLM with
`return_tokens_as_token_ids` names each token "token_id:<id>"; other servers give the token's text and its
UTF-8 bytes, which are mapped onto the student's vocabulary here (TokenMap). KD from the store needs the
teacher's vocabulary to be the student's: `check_vocabulary` asks vLLM's /tokenize route before anything
is paid for, and every reply's tokens must round-trip (decode to the reply's text) or the row keeps its
answer without a teacher top-k, with the reason counted.

Flow: label (sdk/stages/label.py) asks with top_logprobs; `encode_reply` turns each reply into compact
arrays kept in the label journal row (so a killed stage never asks again); `fill_from_endpoint` aligns them
with the completion tokens the trainer will see and adds them to the store. Token positions the endpoint
did not score (the chat template's end-of-turn tokens, or everything after a token that does not match)
are stored one-hot on the trained token: there the loss is the cross-entropy of the teacher's answer.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence
from typing import Optional

import numpy as np

from sdk.errors import ConfigError
from sdk.train.logit_store import LogitStore, StoredRow, completion_tokens, tail_from_topk

TOPK_FIELD = "teacher_topk"  # the label journal's field with a reply's encoded top-k (never in teacher.jsonl)
VOCAB_PROBE = "Distillery checks one vocabulary: naïve café, 3.14159 mg/dL, <b>x</b>\n\tdef f(x): return x**2 — 東京"


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, inverted: the printable character standing for each byte -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _byte_decoder()
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenMap:
    """An endpoint's tokens -> the student's token ids: "token_id:<id>" directly, else by the token's bytes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ids: Optional[dict[bytes, int]] = None

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for: byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen) or SentencePiece pieces."""
        piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
        if piece is None:
            return b""
        if int(token_id) in self.tokenizer.all_special_ids or piece in self.tokenizer.get_added_vocab():
            return piece.encode("utf-8")
        if all(c in _BYTES for c in piece):
            return bytes(_BYTES[c] for c in piece)
        if _SP_BYTE.fullmatch(piece):
            return bytes([int(_SP_BYTE.fullmatch(piece)[1], 16)])
        return piece.replace("▁", " ").encode("utf-8")

    def _by_bytes(self) -> dict[bytes, int]:
        if self._ids is None:
            self._ids = {}
            for token_id in range(len(self.tokenizer)):
                self._ids.setdefault(self.token_bytes(token_id), token_id)  # the first id wins a tie
        return self._ids

    def to_id(self, token: str, raw: Optional[list]) -> Optional[int]:
        if token.startswith("token_id:"):
            value = token[len("token_id:") :]
            return int(value) if value.isdigit() and int(value) < len(self.tokenizer) else None
        data = bytes(raw) if raw is not None else token.encode("utf-8")
        return self._by_bytes().get(data)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def encode_reply(reply, token_map: TokenMap, top_k: int) -> dict:
    """A reply's per-token log-probabilities as the student's ids: {"k", "ids", "logprobs"} (base64 of int32 and
    float16 arrays (n, k + 1): column 0 the generated token, then its top-k; -1 / -inf where the server gave
    fewer or a token does not map) or {"error": why} when the generated tokens do not round-trip."""
    entries = getattr(reply, "logprobs", None)
    if not entries:
        return {"error": "the reply carries no log-probabilities"}
    n = len(entries)
    ids = np.full((n, top_k + 1), -1, dtype="<i4")
    logps = np.full((n, top_k + 1), -np.inf, dtype="<f2")
    for i, (token, logprob, raw, top) in enumerate(entries):
        chosen = token_map.to_id(token, raw)
        if chosen is None:
            return {"error": f"token {token!r} is not in the student's vocabulary"}
        ids[i, 0], logps[i, 0] = chosen, logprob
        column = 1
        for alt_token, alt_logprob, alt_raw in top[:top_k]:
            alt = token_map.to_id(alt_token, alt_raw)
            if alt is not None and alt not in ids[i, 1:column]:  # an unmapped alternative's mass joins the tail
                ids[i, column], logps[i, column] = alt, alt_logprob
                column += 1
    decoded = token_map.tokenizer.decode(ids[:, 0].tolist(), skip_special_tokens=True)
    if decoded.strip() != str(reply).strip():
        return {"error": "the reply's tokens do not decode to its text through the student's tokenizer"}
    return {"k": top_k, "ids": _b64(ids), "logprobs": _b64(logps)}


def decode_topk(encoded: dict) -> tuple[np.ndarray, np.ndarray]:
    """(ids, logprobs), each (n, k + 1), from encode_reply's dict."""
    k = int(encoded["k"])
    ids = np.frombuffer(base64.b64decode(encoded["ids"]), dtype="<i4").reshape(-1, k + 1)
    logps = np.frombuffer(base64.b64decode(encoded["logprobs"]), dtype="<f2").reshape(-1, k + 1)
    return ids, logps


def _fill_missing(topk_ids: np.ndarray, vocab: int) -> np.ndarray:
    """Replace the -1 ids of each position with distinct ids not among its others (their log-prob is -inf)."""
    out = topk_ids.copy()
    for row in np.nonzero((out < 0).any(axis=1))[0]:
        present, filler = set(out[row][out[row] >= 0].tolist()), 0
        for j in np.nonzero(out[row] < 0)[0]:
            while filler in present:
                filler += 1
            out[row, j], filler = filler, filler + 1
    if out.max(initial=0) >= vocab:
        raise ConfigError(f"the teacher returned token ids beyond the student's vocabulary ({vocab} tokens)")
    return out


def aligned_row(tokenizer, answer_ids: Sequence[int], encoded: Optional[dict], top_k: int) -> tuple[StoredRow, int]:
    """The stored row for answer_ids (the completion tokens the trainer sees), and how many of its positions carry
    the endpoint's top-k: those of the longest prefix where the endpoint's generated tokens equal answer_ids
    (after the leading whitespace tokens the answer's strip removed); the rest one-hot on the answer token."""
    answer = np.asarray(answer_ids, dtype="<i4")
    n = len(answer)
    topk_ids = np.full((n, top_k), -1, dtype="<i4")
    topk_ids[:, 0] = answer
    logps = np.full((n, top_k), -np.inf, dtype=np.float32)
    logps[:, 0] = 0.0
    covered = 0
    if encoded is not None and "error" not in encoded:
        ids, lps = decode_topk(encoded)
        start = 0
        while start < len(ids) and ids[start, 0] != answer[0] and not tokenizer.decode([int(ids[start, 0])]).strip():
            start += 1
        chosen = ids[start:, 0]
        limit = min(len(chosen), n)
        covered = int(np.argmin(np.append(chosen[:limit] == answer[:limit], False)))
        topk_ids[:covered] = ids[start : start + covered, 1:]
        logps[:covered] = lps[start : start + covered, 1:]
    topk_ids = _fill_missing(topk_ids, len(tokenizer))
    row = StoredRow(answer, topk_ids, logps.astype("<f2"), tail_from_topk(logps).astype("<f2"))
    return row, covered


def fill_from_endpoint(store: LogitStore, tokenizer, rows: Sequence[dict], system_prompt: str = "") -> dict:
    """Add each labelled row's endpoint top-k (its TOPK_FIELD, from the label journal) to the store, aligned with
    the completion tokens the trainer builds (logit_store.completion_tokens). Rows already stored are skipped.
    Returns rows stored, tokens, the share of tokens with the teacher's top-k, and why rows had none."""
    from sdk.train.sft import sft_dataset

    start = time.perf_counter()
    fresh = [row for row in rows if row.get("answer") and not store.has(row["id"])]
    tokens = covered = 0
    without: dict[str, int] = {}
    for row, example in zip(fresh, sft_dataset(fresh, system_prompt) if fresh else []):
        full, prompt_len = completion_tokens(tokenizer, example["prompt"], example["completion"])
        encoded = row.get(TOPK_FIELD) or {"error": "no log-probabilities were recorded for this row"}
        stored, n_covered = aligned_row(tokenizer, full[prompt_len:], encoded, store.top_k)
        if "error" in encoded:
            without[encoded["error"]] = without.get(encoded["error"], 0) + 1
        store.add_row(row["id"], stored, prompt_ids=full[:prompt_len])
        tokens, covered = tokens + len(stored), covered + n_covered
    store.flush()
    return {
        "rows": len(fresh),
        "tokens": tokens,
        "teacher_topk_share": round(covered / tokens, 4) if tokens else None,
        "rows_without_topk": without,
        "top_k": store.top_k,
        "bytes_per_token": store.bytes_per_token,
        "runtime_s": round(time.perf_counter() - start, 1),
    }


def check_vocabulary(spec, tokenizer) -> Optional[bool]:
    """Ask a vLLM server (/tokenize, free) whether its tokenizer is the student's. True when it is; None when the
    server has no such route (the first reply is checked instead); a ConfigError, before anything is paid for,
    when it is not."""
    from sdk.models.openai_backend import OpenAIChatModel

    theirs = OpenAIChatModel(spec, spec.generation).tokenize({"prompt": VOCAB_PROBE, "add_special_tokens": False})
    if not isinstance(theirs, list):
        return None
    ours = tokenizer(VOCAB_PROBE, add_special_tokens=False)["input_ids"]
    if list(theirs) != list(ours):
        raise ConfigError(
            f"models.teacher ({spec.model} at {spec.base_url}) tokenizes text differently from the student, so its "
            "top-k cannot train it (white-box KD needs one vocabulary): use a student of the teacher's family, or "
            "train.stages without kd"
        )
    return True
