"""What can go wrong around a run that is not the user's input: another process on the same run directory,
the operating system refusing a write, a signal. Each becomes a one-line error and loses nothing.

    RunLock            an exclusive OS lock (flock) on <run>/.lock for the whole of run, resume and report; it
                       dies with its process, so a SIGKILL never leaves a stale lock
    os_fault(exc)      "no space left on device writing <path>" for an OSError (or a library error wrapping
                       one) that a user can fix, else None
    graceful_stop()    SIGTERM and Ctrl-C raise KeyboardInterrupt between atomic writes, never inside one (the
                       pipeline then marks the run stopped and raises Interrupted); a second one exits at once
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from sdk.errors import RunLocked

# errno -> what the user is told
USER_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
# libraries that wrap an OSError in their own type keep the C library's message
_MESSAGES = {
    "No space left on device": "no space left on device",
    "Disk quota exceeded": "disk quota exceeded",
    "Permission denied": "permission denied",
    "Read-only file system": "read-only file system",
    "file write failed": "a file write failed (is the disk full?)",
}


def os_fault(exc: BaseException) -> Optional[str]:
    """A one-line description of an OS fault the user can fix, found anywhere in the exception chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in USER_FAULTS:
            where = f" at {exc.filename}" if exc.filename else ""
            return f"{USER_FAULTS[exc.errno]}{where}"
        text = str(exc)
        for needle, what in _MESSAGES.items():
            if needle in text:
                return what + (f" ({text.splitlines()[0][:200]})" if text.strip() else "")
        exc = exc.__cause__ or exc.__context__
    return None


class RunLock:
    """Exclusive, non-blocking flock on <run_dir>/.lock; the file records who holds it (pid, host, since).

    flock works on local filesystems and on NFSv4 (the Linux client maps it to NFS byte-range locks);
    docs/failure-and-recovery.md lists the filesystems where it does not protect a run directory.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: Optional[int] = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"{self.path.parent} is in use by {self.holder()}; wait for it to finish, or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            ).encode(),
        )
        os.fsync(fd)
        self._fd = fd
        return self

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "another process"
        return f"process {info.get('pid')} on {info.get('host')} (since {info.get('since')})"

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# signals ------------------------------------------------------------------------------------------
# KeyboardInterrupt, not an Exception: a retry loop's `except Exception` never swallows a stop
_state = {"deferring": 0, "pending": False, "why": None}


@contextlib.contextmanager
def atomic_section() -> Iterator[None]:
    """A signal that arrives inside waits until the section (an atomic write, a journal append) is done."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        if _state["deferring"] == 0 and _state["pending"]:
            _state["pending"] = False
            raise KeyboardInterrupt(_state["why"])


def stop_reason() -> str:
    return _state["why"] or "stopped by Ctrl-C"


def _handler(signum, frame) -> None:
    if _state["why"] is not None:  # the second signal: leave at once
        os._exit(130)
    _state["why"] = "stopped by SIGTERM" if signum == signal.SIGTERM else "stopped by Ctrl-C"
    if _state["deferring"]:
        _state["pending"] = True
        return
    raise KeyboardInterrupt(_state["why"])


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into KeyboardInterrupt for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    _state.update(pending=False, why=None)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
