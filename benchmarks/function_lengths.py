"""The longest functions of the library (workflow/scripts/deemd/), by line count.

    python3 benchmarks/function_lengths.py [--top 10] [--root workflow/scripts/deemd]

Counts a function from its ``def`` (decorators excluded) to its last line, docstring
included; nested functions count inside their parent and are listed on their own too.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines, 'file.py:line name') of every function and method below ``root``, longest first."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return sorted(rows, key=lambda row: (-row[0], row[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "deemd")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    rows = function_lengths(args.root)
    for lines, name in rows[: args.top]:
        print(f"{lines:5d}  {name}")
    print(f"{sum(1 for lines, _ in rows if lines > 60)} of {len(rows)} functions over 60 lines")


if __name__ == "__main__":
    main()
