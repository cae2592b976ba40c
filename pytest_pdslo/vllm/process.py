"""A launched server process: own process group, log file, health wait, clean stop.

Nothing here knows about vLLM's flags; ``ServerProcess`` runs an argument list (never a
shell), writes stdout and stderr to one log file, waits for ``/health`` while watching
that the process is still alive, and stops the whole process group (vLLM's API server
spawns engine and worker processes): SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..control import TargetUnreachable, wait_healthy
from ..errors import TargetError

#: Lines of the server log carried in a launch error.
LOG_TAIL_LINES = 40
#: Seconds between SIGTERM and SIGKILL of the process group.
STOP_GRACE_S = 15.0


class LaunchError(TargetError):
    """A server could not be started; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def log_tail(path: Path | str, lines: int = LOG_TAIL_LINES, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a (possibly large, possibly missing) log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.split("\n") if line.strip()]
    return "\n".join(kept[-lines:])


def kill_group(pid: int, grace_s: float = STOP_GRACE_S, *, proc: subprocess.Popen[bytes] | None = None) -> int | None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``grace_s``; reap ``proc``.

    Returns the leader's exit code when known. Safe to call on a group that is gone.
    """
    def _signal(sig: int) -> bool:
        try:
            os.killpg(pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _group_alive() -> bool:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    _signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    code: int | None = None
    while time.monotonic() < deadline:
        if proc is not None and code is None:
            code = proc.poll()
        if not _group_alive() and (proc is None or code is not None):
            return code
        time.sleep(0.1)
    _signal(signal.SIGKILL)
    if proc is not None:
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
    # children re-parented to init are reaped by it; wait until the group is gone
    end = time.monotonic() + 5
    while _group_alive() and time.monotonic() < end:
        time.sleep(0.05)
    return code


class ServerProcess:
    """One server: ``start()``, ``wait_healthy()``, ``stop()``; ``url`` is its base URL."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path | str,
                 host: str = "127.0.0.1", port: int, cwd: str | None = None) -> None:
        if not argv:
            raise ValueError("empty command line")
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.host = host
        self.port = port
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"# pdslo: starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,  # own session and process group: killpg reaches workers
                    close_fds=True,
                )
            except OSError as exc:
                raise LaunchError(f"{self.name}: cannot start {self.argv[0]!r}: {exc.strerror or exc}") from None
        return self

    def poll(self) -> int | None:
        """The exit code if the server process has ended, else None."""
        if self.proc is None:
            return self.returncode
        code = self.proc.poll()
        if code is not None:
            self.returncode = code
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.poll() is None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def failure(self, what: str) -> LaunchError:
        tail = self.tail()
        body = "\n".join("    " + line for line in tail.splitlines()) if tail else "    (log is empty)"
        return LaunchError(f"{self.name}: {what}\n  log {self.log_path} ends with:\n{body}")

    def wait_healthy(self, timeout_s: float, progress: Callable[[str], None] | None = None,
                     progress_every_s: float = 15.0) -> float:
        """Wait for ``/health``; raise ``LaunchError`` (with the log tail) on exit or timeout."""
        last_report = [0.0]

        def _check(elapsed: float, reason: str) -> None:
            code = self.poll()
            if code is not None:
                raise self.failure(f"server exited with code {code} after {elapsed:.0f}s, before it was healthy")
            if progress is not None and elapsed - last_report[0] >= progress_every_s:
                last_report[0] = elapsed
                last = (self.tail(1) or "").strip()[:160]
                progress(f"{self.name}: waiting for {self.url}/health ({elapsed:.0f}s of {timeout_s:g}s) {last}")

        try:
            return wait_healthy(self.url, timeout_s, _check, poll_s=0.5)
        except TargetUnreachable:
            raise self.failure(f"not healthy after {timeout_s:g}s") from None

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """Stop the whole process group; idempotent."""
        if self.proc is None:
            return self.returncode
        proc, self.proc = self.proc, None
        code = kill_group(proc.pid, grace_s, proc=proc)
        self.returncode = code if code is not None else proc.returncode
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
