"""Retention: move old audit segments, with the checkpoints that cover them, to an archive.

The newest `keep` segments stay (the open one among them), so this is safe while the daemon
runs. The live log then starts after a checkpoint and still verifies; so does the archive.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ensign.daemon.audit.segment import CHECKPOINTS, PUBLIC_KEY, segments
from ensign.daemon.errors import UsageError


def archive(audit_dir: Path, dest: Path, keep: int = 1) -> list[str]:
    if keep < 1:
        raise UsageError("--keep must be at least 1: the newest segment is the open one")
    found = segments(audit_dir)
    moving = [p for _, p in found[:-keep]] if len(found) > keep else []
    if not moving:
        return []
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copy2(audit_dir / PUBLIC_KEY, dest / PUBLIC_KEY)
    names = {p.name for p in moving}
    cp_path = audit_dir / CHECKPOINTS
    lines = cp_path.read_bytes().splitlines() if cp_path.exists() else []
    covering = [line for line in lines if line.strip() and json.loads(line).get("segment") in names]
    existing = set((dest / CHECKPOINTS).read_bytes().splitlines()) \
        if (dest / CHECKPOINTS).exists() else set()
    with open(dest / CHECKPOINTS, "ab") as f:
        for line in covering:
            if line not in existing:
                f.write(line + b"\n")
    for p in moving:
        shutil.move(str(p), dest / p.name)
    return sorted(names)
