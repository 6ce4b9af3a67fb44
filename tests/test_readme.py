"""Every Python example in the README runs as written (notebook-only blocks, with magics, apart)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if not re.search(r"^\s*%", block, flags=re.M)]


def test_the_readme_has_python_examples():
    assert len(_python_blocks()) >= 2


def test_the_readme_python_examples_run_in_order_in_a_fresh_interpreter(tmp_path):
    script = "\n\n".join(_python_blocks())
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={"NBFLOW_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "raised" not in done.stderr, done.stderr  # e.g. a subscriber removed after an error
