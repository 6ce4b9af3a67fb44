"""Re-execute the documentation notebooks and store only the outputs nbval compares.

    .venv/bin/python notebooks/refresh_outputs.py            # every notebook here
    .venv/bin/python notebooks/refresh_outputs.py 02-task-runners.ipynb

CI runs the notebooks with ``pytest --nbval-lax``, which compares the stored
outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` with fresh ones and only
runs the others. So after editing a notebook, run this: it executes the
notebook in this environment's kernel, keeps the outputs of the checked cells,
and strips every other output, execution count and widget state, so the
files stay small and diffs stay readable. It stops with an error if a cell
fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CHECK = "# NBVAL_CHECK_OUTPUT"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def is_checked(cell: nbformat.NotebookNode) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return CHECK in cell.source or "nbval-check-output" in tags


def refresh(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.monotonic()
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=False,
    ).execute()
    elapsed = time.monotonic() - started
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if not is_checked(cell):
            cell.execution_count = None
            cell.outputs = []
            continue
        # A checked cell keeps its execution count: nbval refuses stored outputs of a
        # cell that looks unrun.
        kept = []
        for output in cell.outputs:
            data = output.get("data")
            if data is not None:
                data.pop(WIDGET_VIEW, None)
                if not data:
                    continue
            kept.append(output)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    # nbclient records the kernel's Python version here: keep only what does not churn.
    nb.metadata["language_info"] = {"name": nb.metadata.get("language_info", {}).get("name", "python")}
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> None:
    paths = [HERE / name for name in argv] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: ", end="", flush=True)
        print(f"executed in {refresh(path):.1f}s, checked outputs stored")


if __name__ == "__main__":
    main(sys.argv[1:])
