"""`make tables` (its last step): README.md quotes the committed tables, never typed numbers.

    python -m benchmarks.readme [--readme README.md] [--check]

A block of the README

    <!-- table: results/tables/<suite>.md -->
    ...
    <!-- /table -->

is replaced by that committed file (path relative to the README's folder): the file without
its `# <title>` first line (the README's own heading names it), its relative links and images
re-pointed from the file's folder to the README's. `<!-- table: FILE part=N -->` quotes only
the N-th Markdown table of the file (1-based; a table is a run of lines starting with `|`).
Markers inside code fences are text, not blocks.

The README is rewritten in place atomically (temp file + rename), and only when a block changed.
`--check` changes nothing: one line per stale or missing block, exit status 1. Without
`--check`, a block naming a file that does not exist (or a part it lacks) is one line and exit
status 2, the README untouched; so is a malformed or unterminated block.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

OPEN = re.compile(r"^<!-- table: (?P<path>\S+)(?: part=(?P<part>[1-9]\d*))? -->$")
CLOSE = "<!-- /table -->"
FENCE = re.compile(r"^ {0,3}(```|~~~)")
LINK = re.compile(r"(\]\()([^)\s]+)(\))")  # [text](target) and ![alt](target)


class ReadmeError(Exception):
    """A README block that cannot be filled: one line naming the block and the file."""


@dataclass
class Block:
    start: int  # index of the opening marker line
    end: int  # index of the closing marker line
    path: str  # as written in the marker, relative to the README's folder
    part: int | None

    def name(self, readme: Path) -> str:
        part = f" part={self.part}" if self.part else ""
        return f"{readme}:{self.start + 1}: block `{self.path}{part}`"


def blocks(lines: list[str], readme: Path) -> list[Block]:
    """The table blocks of the README's lines (markers in code fences are not blocks)."""
    found, fence, i = [], None, 0
    while i < len(lines):
        line = lines[i].rstrip()
        m = FENCE.match(line)
        if m and fence is None:
            fence = m.group(1)
        elif m and line.strip().startswith(fence):
            fence = None
        elif fence is None and line.startswith("<!-- table:"):
            opened = OPEN.match(line)
            if not opened:
                raise ReadmeError(f"{readme}:{i + 1}: malformed table marker {line!r}; "
                                  "expected `<!-- table: PATH -->` or `<!-- table: PATH part=N -->`")
            end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == CLOSE), None)
            nested = next((j for j in range(i + 1, end or len(lines)) if lines[j].startswith("<!-- table:")), None)
            if end is None or nested is not None:
                raise ReadmeError(f"{readme}:{i + 1}: block `{opened['path']}` has no `{CLOSE}` "
                                  "before the next block or the end of the file")
            part = int(opened["part"]) if opened["part"] else None
            found.append(Block(i, end, opened["path"], part))
            i = end
        elif fence is None and line == CLOSE:
            raise ReadmeError(f"{readme}:{i + 1}: `{CLOSE}` without an opening `<!-- table: PATH -->`")
        i += 1
    return found


def markdown_tables(text: str) -> list[str]:
    """The file's Markdown tables in order: each a maximal run of lines starting with `|`."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current))
            current = []
    if current:
        tables.append("\n".join(current))
    return tables


def repoint(text: str, source_dir: Path, readme_dir: Path) -> str:
    """Relative link targets of a file in source_dir, made relative to readme_dir."""
    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", target, re.I):
            return m.group(0)  # a URL, an absolute path or an anchor: as it is
        moved = os.path.relpath(os.path.normpath(source_dir / target), readme_dir)
        return m.group(1) + Path(moved).as_posix() + m.group(3)
    return LINK.sub(fix, text)


def quote(block: Block, readme: Path) -> str:
    """What the block must contain: the file (or its part=N table), as described above."""
    readme_dir = readme.parent
    path = readme_dir / block.path
    if not path.is_file():
        raise ReadmeError(f"{block.name(readme)}: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if block.part:
        tables = markdown_tables(text)
        if block.part > len(tables):
            raise ReadmeError(f"{block.name(readme)}: {path} has {len(tables)} Markdown "
                              f"table(s), not a table {block.part}")
        body = tables[block.part - 1]
    else:
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        body = "\n".join(lines)
    return repoint(body.strip("\n"), path.parent, readme_dir)


def render(block: Block, lines: list[str], content: str) -> list[str]:
    """The block's lines with content between its two markers (a blank line either side)."""
    return [lines[block.start], "", *content.split("\n"), "", lines[block.end]]


def refresh(readme: Path) -> tuple[str, str, list[str]]:
    """(old text, new text, one line per stale or missing block) of the README.

    A missing file or part is listed, its block left as it is; a malformed block raises."""
    old = readme.read_text(encoding="utf-8")
    lines = old.split("\n")
    out, problems, last = [], [], 0
    for block in blocks(lines, readme):
        out += lines[last:block.start]
        current = lines[block.start:block.end + 1]
        try:
            wanted = render(block, lines, quote(block, readme))
        except ReadmeError as e:
            problems.append(f"missing: {e}")
            wanted = current
        if wanted != current:
            problems.append(f"stale: {block.name(readme)} differs from {block.path}")
        out += wanted
        last = block.end + 1
    out += lines[last:]
    return old, "\n".join(out), problems


def write_atomic(path: Path, text: str) -> None:
    """Write text to path by a temp file in the same folder and os.replace (keeps the mode)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readme", default="README.md")
    p.add_argument("--check", action="store_true",
                   help="change nothing; list stale or missing blocks, exit 1 if any")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    try:
        old, new, problems = refresh(readme)
    except (ReadmeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        for line in problems:
            print(line)
        return 1 if problems else 0
    missing = [line for line in problems if line.startswith("missing: ")]
    if missing:
        for line in missing:
            print(f"error: {line.removeprefix('missing: ')} (README left as it is)", file=sys.stderr)
        return 2
    if new != old:
        write_atomic(readme, new)
    stale = len(problems)
    print(f"{readme}: {stale} block(s) refreshed" if stale else f"{readme}: every block up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
