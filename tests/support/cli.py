"""What a refused CLI command must look like: its documented exit code and one line on stderr."""

from __future__ import annotations

import subprocess


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """Assert `result` exited with `exit_code` and wrote exactly one line, no traceback, on
    stderr; return that line."""
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]
