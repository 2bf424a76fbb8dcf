"""Build the tutorial notebooks from their percent-format sources (outputs stripped).

Each ``NN_name.py`` here holds cells separated by ``# %%`` (code) and ``# %% [markdown]``
lines. Run ``python notebooks/_src/build.py`` after editing a source; the test suite
checks that the committed .ipynb files are up to date and executes them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
OUT = HERE.parent


def cells_of(source: str):
    blocks: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            blocks.append(("markdown" if "[markdown]" in line else "code", []))
        elif blocks:
            blocks[-1][1].append(line)
    for kind, lines in blocks:
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            yield nbformat.v4.new_markdown_cell(text)
        elif text:
            yield nbformat.v4.new_code_cell(text)


def build(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells_of(src.read_text()))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids, so rebuilding changes nothing
        cell["id"] = f"{src.stem}-{i}"
    return nb


def main() -> int:
    for src in sorted(HERE.glob("[0-9][0-9]_*.py")):
        nbformat.write(build(src), OUT / f"{src.stem}.ipynb")
        print(f"wrote notebooks/{src.stem}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
