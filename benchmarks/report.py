"""Writes a benchmark's figures: OUT/NAME.json (everything) and OUT/NAME.md (the table), and prints the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(out: str | Path, name: str, data: dict[str, Any], markdown: str | list[str]) -> None:
    """`markdown` is the report's text, or its lines."""
    text = markdown if isinstance(markdown, str) else "\n".join(markdown) + "\n"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)
