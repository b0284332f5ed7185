"""Tools the suite drives that come from Debian packages (chromium, promtool).

``make test`` must work on a fresh machine with nothing installed by hand, so a missing tool
is installed with apt-get when the machine allows it (root, apt-get present); the package
lists may be missing on a fresh machine, hence one ``apt-get update`` and a second try.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["ensure_tool"]


def ensure_tool(names: Sequence[str], package: str, install_timeout_s: float = 900) -> tuple[str | None, str]:
    """(path to the first of ``names`` found, installing ``package`` if none is; reason when None)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path, ""
    if shutil.which("apt-get") is None:
        return None, f"{names[0]} is not installed and apt-get is not available"
    if os.geteuid() != 0:
        return None, f"{names[0]} is not installed and installing it needs root (apt-get install {package})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=install_timeout_s, check=False)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=install_timeout_s, check=False)
            done = subprocess.run(cmd, env=env, capture_output=True, timeout=install_timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"installing {package} failed: {exc}"
    for name in names:
        path = shutil.which(name)
        if path:
            return path, ""
    tail = done.stderr.decode(errors="replace")[-300:]
    return None, f"apt-get install {package} failed ({done.returncode}): {tail}"
