"""A persistent response cache shared by every run on a machine: one SQLite file.

The key is a sha256 of canonical JSON: provider, model name (not the URL), messages and sampling
parameters; with temperature > 0 the seed and the sample number are part of it too. A hit makes no
call. Only successful replies are stored, one commit each, so a kill loses at most the replies in
flight. WAL mode lets several processes read and write at once; a writer waits (busy timeout) for
another's commit instead of failing. SIGKILL cannot corrupt the file: SQLite commits are atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from sdk.paths import cache_dir

ENV = "DISTILLERY_RESPONSE_CACHE"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS responses_model ON responses (model);
CREATE TABLE IF NOT EXISTS counters (model TEXT PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0);
"""


def default_cache_path() -> Path:
    """$DISTILLERY_RESPONSE_CACHE, else <user cache>/responses.sqlite."""
    configured = os.environ.get(ENV)
    return Path(configured) if configured else cache_dir() / "responses.sqlite"


def cache_key(provider: str, model: str, messages: list[dict], params: dict) -> str:
    """sha256 of the canonical JSON of everything that decides a reply."""
    blob = json.dumps(
        {"provider": provider, "model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        self._conn: sqlite3.Connection | None = None
        self._pid = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        # One connection per process (a forked child opens its own), opened on first use.
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn, self._pid = self._connect(), os.getpid()  # a damaged file raises here: see _guarded
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: atomic and safe against a process kill
        conn.executescript(_SCHEMA)
        conn.execute("SELECT COUNT(*) FROM responses").fetchone()  # a damaged file fails here, not mid-run
        return conn

    def _quarantine(self, exc: Exception) -> None:
        """Move a damaged cache aside (responses.sqlite.corrupt-<time>) and start a fresh one. The run
        directories' journals still hold every reply that was paid for, so a resume re-asks none of them."""
        from sdk.progress import log

        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for part in sorted(self.path.parent.glob(self.path.name + "*")):
            if part.is_file() and ".corrupt-" not in part.name:
                part.rename(part.with_name(part.name.replace(self.path.name, f"{self.path.name}.corrupt-{stamp}", 1)))
        log(
            f"[yellow]the response cache {self.path} is damaged ({exc}); moved it aside to {self.path.name}.corrupt-{stamp} and started a fresh one[/yellow]"
        )

    def _guarded(self, work):
        """Run work(db) under the lock; a cache found damaged mid-run is moved aside and work retried once."""
        with self._lock:
            try:
                return work(self._db())
            except sqlite3.DatabaseError as exc:
                if not _corrupt(exc):
                    raise
                self._quarantine(exc)
                return work(self._db())

    def get_many(self, keys: list[str]) -> dict[str, str]:
        def work(db) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                found.update(db.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", part).fetchall())
            return found

        return self._guarded(work)

    def put(self, key: str, provider: str, model: str, response: str) -> None:
        """Store one reply and commit it (the first writer of a key wins; replies for a key are equivalent)."""
        self._guarded(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO responses (key, provider, model, response, created) VALUES (?, ?, ?, ?, ?)",
                (key, provider, model, response, time.time()),
            )
        )

    def count(self, model: str, hits: int, misses: int) -> None:
        if not (hits or misses):
            return
        self._guarded(
            lambda db: db.execute(
                "INSERT INTO counters (model, hits, misses) VALUES (?, ?, ?) "
                "ON CONFLICT(model) DO UPDATE SET hits = hits + excluded.hits, misses = misses + excluded.misses",
                (model, hits, misses),
            )
        )

    def stats(self) -> dict:
        """Entries, file size, and per model: entries, hits, misses."""
        if not self.path.exists():
            return {"path": str(self.path), "entries": 0, "bytes": 0, "models": {}}

        def work(db) -> dict:
            per = {
                m: {"entries": n, "hits": 0, "misses": 0}
                for m, n in db.execute("SELECT model, COUNT(*) FROM responses GROUP BY model")
            }
            for m, h, miss in db.execute("SELECT model, hits, misses FROM counters"):
                per.setdefault(m, {"entries": 0, "hits": 0, "misses": 0}).update(hits=h, misses=miss)
            return per

        per = self._guarded(work)
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {
            "path": str(self.path),
            "entries": sum(v["entries"] for v in per.values()),
            "bytes": size,
            "models": per,
        }

    def clear(self, model: str | None = None) -> int:
        """Delete every entry (or one model's); returns how many were deleted."""
        if not self.path.exists():
            return 0

        def work(db) -> int:
            if model is None:
                n = db.execute("DELETE FROM responses").rowcount
                db.execute("DELETE FROM counters")
            else:
                n = db.execute("DELETE FROM responses WHERE model = ?", (model,)).rowcount
                db.execute("DELETE FROM counters WHERE model = ?", (model,))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return n

        n = self._guarded(work)
        if model is None:
            self._guarded(lambda db: db.execute("VACUUM"))
        return n

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file, not a busy one ("database is locked" is an OperationalError too)."""
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def weights_fingerprint(model) -> str:
    """sha256 of a torch model's parameters and buffers (names, dtypes, shapes and bytes): the same weights give the
    same fingerprint whatever the folder or name they were loaded from. About a second per 500 MB on a CPU."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in list(model.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
