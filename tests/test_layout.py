"""The codebase's own rules that a reader relies on: no function in digest/ over 60 lines
(the house style: small steps, each readable at once)."""

from __future__ import annotations

import ast
from pathlib import Path

DIGEST = Path(__file__).parent.parent / "digest"
MOST_LINES = 60


def test_no_function_in_the_library_is_over_60_lines() -> None:
    long = []
    for path in sorted(DIGEST.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MOST_LINES:
                    long.append(f"{path.relative_to(DIGEST.parent)}:{node.lineno}"
                                f" {node.name} ({lines} lines)")
    assert not long, long
