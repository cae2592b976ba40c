"""Stop a server's process group when the launcher dies (run as a file, stdlib only).

    python -I _watchdog.py PGID GRACE_S LAUNCHER_PID   (stdin: the read end of a pipe the launcher holds)

The launcher (``process.ServerProcess``) keeps the write end of the pipe; nothing else
holds it. While the launcher lives, stdin stays open and silent. ``disarm`` on stdin
means the launcher stopped the server itself: exit. End of file without ``disarm``
means the launcher is gone (SIGKILL, crash, OOM kill): SIGTERM the whole group, SIGKILL
it after GRACE_S. A parent pid other than LAUNCHER_PID (the watchdog was re-parented) means
the same, for the case where a forked, not exec'd, child of the launcher still holds the
pipe's write end. A whole group is reached, so vLLM's engine and worker processes
(children of the API server, same group) go too, which PR_SET_PDEATHSIG on the top
process alone would miss. The watchdog also exits once the group is gone by itself.

It runs in its own session, ignores SIGINT/SIGHUP (a Ctrl-C of the terminal is the
launcher's to handle) and imports nothing beyond the standard library, so it starts
in milliseconds and needs neither pytest-pdslo nor vLLM installed.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL_S = 0.5


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _say(message: str) -> None:
    try:
        sys.stdout.write(f"# pdslo watchdog: {message}\n")
        sys.stdout.flush()
    except OSError:
        pass


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL what is left after ``grace_s``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def watch(pgid: int, grace_s: float, launcher_pid: int | None = None, fd: int = 0) -> str:
    """Block until the launcher disarms, dies, or the group ends; say which."""
    while True:
        if launcher_pid is not None and os.getppid() != launcher_pid:
            _say(f"launcher {launcher_pid} gone: stopping process group {pgid}")
            stop_group(pgid, grace_s)
            return "stopped"
        try:
            ready, _, _ = select.select([fd], [], [], POLL_S)
        except InterruptedError:
            continue
        if ready:
            try:
                data = os.read(fd, 64)
            except OSError:
                data = b""
            if not data:
                _say(f"launcher gone: stopping process group {pgid}")
                stop_group(pgid, grace_s)
                return "stopped"
            if b"disarm" in data:
                return "disarmed"
            continue
        if not _group_alive(pgid):
            return "gone"


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        sys.stderr.write("usage: _watchdog.py PGID GRACE_S [LAUNCHER_PID]\n")
        return 2
    pgid, grace_s = int(argv[1]), float(argv[2])
    launcher_pid = int(argv[3]) if len(argv) == 4 else None
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    watch(pgid, grace_s, launcher_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
