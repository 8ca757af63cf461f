"""Replaces the generated block between two HTML-comment markers of a markdown file."""
import sys
from pathlib import Path


def splice(path: Path, name: str, table: str) -> None:
    """Puts `table` between `<!-- NAME:begin -->` and `<!-- NAME:end -->` of `path`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        sys.exit(f"{path}: markers {begin} / {end} missing")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
