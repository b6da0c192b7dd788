"""Processes and their sockets, read from /proc (no psutil in the environment): what a test started, and
what it listens on. Linux only, as Ray's own process handling here is."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a command we started (Ray's agents outlive a SIGKILLed driver)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> set[int]:
    """pid and every process below it, from /proc (Ray's processes hang under the driver)."""
    parent = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat_file.parent.name)] = int(fields[1])
    found, todo = {pid}, [pid]
    while todo:
        current = todo.pop()
        for child, ppid in parent.items():
            if ppid == current and child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening_addresses(pids: set[int]) -> set[str]:
    """Addresses TCP sockets of these processes listen on, read from /proc/net/tcp{,6}."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(_ip(fields[1].split(":")[0], width))
    return found


def _ip(hex_address: str, width: int) -> str:
    """The kernel's little-endian hex address as text."""
    raw = bytes.fromhex(hex_address)
    # each 32-bit word is stored in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if width == 8:
        return str(ipaddress.IPv4Address(words))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)  # gRPC's IPv4 sockets show as ::ffff:a.b.c.d


def stop(pids: set[int], grace_s: float = 3.0) -> None:
    """SIGTERM these processes, then SIGKILL whatever is left after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in [p for p in pids if alive(p)]:  # not one that ended (its number may be reused)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.5)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def started_with(text: str) -> set[int]:
    """Processes whose command line contains `text` (e.g. a Ray head's own temp dir), with their descendants."""
    roots = {int(p.name) for p in Path("/proc").glob("[0-9]*") if text in cmdline(int(p.name))}
    return set().union(*(descendants(r) for r in roots)) if roots else set()
