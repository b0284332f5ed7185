"""Name the bottleneck: sample a process with py-spy while load runs, summarise hot frames."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["descendant_pids", "find_pyspy", "start_profile", "summarise"]


def find_pyspy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def descendant_pids(root: int, cmd_prefix: str) -> list[int]:
    """Descendants of ``root`` whose command line starts with ``cmd_prefix``."""
    parents: dict[int, int] = {}
    cmds: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(stat[stat.rfind(")") + 2 :].split()[1])
        cmds[pid] = cmd
    out = []
    for pid, cmd in cmds.items():
        p = pid
        while p > 1 and p != root:
            p = parents.get(p, 1)
        if p == root and cmd.startswith(cmd_prefix):
            out.append(pid)
    return sorted(out)


def start_profile(pyspy: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy record (raw collapsed stacks) of ``pid`` for ``seconds``, non-blocking."""
    return subprocess.Popen(
        [
            pyspy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise(raw: Path, top: int = 12) -> dict[str, object]:
    """Top frames by self samples and by inclusive samples (percent of all samples)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    try:
        lines = raw.read_text(errors="replace").splitlines()
    except OSError:
        return {"error": "no profile"}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        self_c[_short(frames[-1])] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count
    if not total:
        return {"error": "no samples"}
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in self_c.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top * 2)],
    }


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        i = parts.index("site-packages")
        path = "/".join(parts[i + 1 : i + 3])
    else:
        path = "/".join(parts[-2:])
    return f"{name} ({path})"
