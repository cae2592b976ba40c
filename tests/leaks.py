"""What a run may leave behind, read without psutil: descriptors, sockets, threads, children."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path


def open_fds() -> dict[str, str]:
    """This process's open descriptors: number -> what it points to."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed while listing (the listing's own descriptor)
            pass
    return out


def sockets_to(port: int) -> int:
    """Sockets of this process connected to ``port`` on some host (the client's ends)."""
    inodes = {target[8:-1] for target in open_fds().values() if target.startswith("socket:[")}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in inodes:
                count += 1
    return count


def children() -> list[int]:
    """Live child processes of this process (zombies included: they were not reaped)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields after it are fixed
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me:
            out.append(int(entry))
    return out


def _io(fds: dict[str, str]) -> dict[str, str]:
    return {fd: t for fd, t in fds.items() if not t.startswith("/")}


@dataclass
class Snapshot:
    """Descriptors, threads and children at one moment, to compare with a later one."""

    fds: dict[str, str]
    threads: set[threading.Thread]
    children: list[int]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(open_fds(), set(threading.enumerate()), children())

    def leaks_since(self, before: Snapshot) -> list[str]:
        """What this snapshot has that ``before`` had not (empty: nothing left behind)."""
        problems = []
        # sockets, pipes, event polls: what a run opens; files are caches (matplotlib keeps its fonts open)
        mine, theirs = _io(self.fds), _io(before.fds)
        if len(mine) > len(theirs):
            new = sorted(t for fd, t in mine.items() if theirs.get(fd) != t)
            problems.append(f"{len(mine) - len(theirs)} more descriptors: {new}")
        new_threads = [t.name for t in self.threads - before.threads if t.is_alive()]
        if new_threads:
            problems.append(f"threads left running: {new_threads}")
        new_children = sorted(set(self.children) - set(before.children))
        if new_children:
            problems.append(f"child processes left: {new_children}")
        return problems
