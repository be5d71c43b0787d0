"""README.md quotes committed tables, never typed numbers (benchmarks/readme.py; no training)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import readme as rd

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def test_every_block_of_the_readme_equals_its_committed_file(capsys):
    assert rd.main(["--readme", str(README), "--check"]) == 0, capsys.readouterr().out
    assert rd.blocks(README.read_text(encoding="utf-8").split("\n"), README), "README quotes no table"


# --- the mechanism, on a tmp README and tmp tables --------------------------------------------

TABLE = """# demo

Suite `demo`: a caption  
Hardware: somewhere.  

| a | b |
|---|---|
| 1 | 2 |

Published reference:

| p | q |
|---|---|
| 3 | 4 |

![plot](demo_plot.png) and [a site](https://example.org)
"""


@pytest.fixture
def tree(tmp_path):
    tables = tmp_path / "results" / "tables"
    tables.mkdir(parents=True)
    (tables / "demo.md").write_text(TABLE)
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nProse.\n\n<!-- table: results/tables/demo.md -->\nold\n<!-- /table -->\n\n"
                      "Only the second table:\n\n<!-- table: results/tables/demo.md part=2 -->\n<!-- /table -->\n\n"
                      "```\n<!-- table: results/tables/absent.md -->\n```\nEnd.\n")
    return readme


def test_replace_fills_blocks_with_the_file_and_a_second_run_changes_nothing(tree, capsys):
    assert rd.main(["--readme", str(tree)]) == 0
    text = tree.read_text()
    body = TABLE.split("\n", 1)[1].strip("\n").replace("](demo_plot.png)", "](results/tables/demo_plot.png)")
    assert f"<!-- table: results/tables/demo.md -->\n\n{body}\n\n<!-- /table -->" in text
    assert "# demo" not in text and "old" not in text  # the title line goes; the README's heading names it
    assert "](https://example.org)" in text  # URLs stay as they are
    assert "<!-- table: results/tables/demo.md part=2 -->\n\n| p | q |\n|---|---|\n| 3 | 4 |\n\n<!-- /table -->" in text
    assert text.startswith("# Title\n\nProse.\n\n")
    assert text.endswith("```\n<!-- table: results/tables/absent.md -->\n```\nEnd.\n")  # fenced: text
    mtime = tree.stat().st_mtime_ns
    assert rd.main(["--readme", str(tree), "--check"]) == 0
    assert rd.main(["--readme", str(tree)]) == 0 and tree.stat().st_mtime_ns == mtime  # not rewritten
    assert "every block up to date" in capsys.readouterr().out
    assert not [p for p in tree.parent.iterdir() if p.name.endswith(".tmp")]  # no temp file left


def test_check_names_each_stale_block_and_changes_nothing(tree, capsys):
    assert rd.main(["--readme", str(tree)]) == 0
    (tree.parent / "results" / "tables" / "demo.md").write_text(TABLE.replace("| 1 | 2 |", "| 1 | 5 |"))
    before = tree.read_bytes()
    capsys.readouterr()
    assert rd.main(["--readme", str(tree), "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("stale: ") and "results/tables/demo.md" in out[0]
    assert f"{tree}:5:" in out[0]  # the block's line
    assert tree.read_bytes() == before
    assert rd.main(["--readme", str(tree)]) == 0 and "| 1 | 5 |" in tree.read_text()


def test_a_missing_file_is_one_line_and_leaves_the_readme_untouched(tree, capsys):
    tree.write_text(tree.read_text() + "\n<!-- table: results/tables/nope.md -->\n<!-- /table -->\n")
    before = tree.read_bytes()
    assert rd.main(["--readme", str(tree)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results/tables/nope.md" in err[0] and "does not exist" in err[0]
    assert tree.read_bytes() == before  # the good block was not refreshed either
    assert rd.main(["--readme", str(tree), "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("missing: ") and "nope.md" in line for line in out)
    assert tree.read_bytes() == before


@pytest.mark.parametrize("tail, message", [
    ("<!-- table: results/tables/demo.md -->\nno end\n", "has no `<!-- /table -->`"),
    ("<!-- table: results/tables/demo.md part=x -->\n<!-- /table -->\n", "malformed table marker"),
    ("<!-- /table -->\n", "without an opening"),
    ("<!-- table: results/tables/demo.md part=3 -->\n<!-- /table -->\n", "has 2 Markdown table(s), not a table 3"),
])
def test_a_malformed_block_is_one_line_and_exit_2(tree, capsys, tail, message):
    tree.write_text(tree.read_text() + tail)
    before = tree.read_bytes()
    assert rd.main(["--readme", str(tree)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert tree.read_bytes() == before


# --- no typed measured figure outside the blocks ----------------------------------------------

# What a measured figure looks like in prose. Configuration facts (epochs, images, batch sizes,
# bitwidths, integer sparsities such as 92/91/74%, run counts) do not match: a measurement of
# this harness prints decimals (accuracies, errors, ratios, sizes) or a unit of speed or time.
MEASURED = {
    r"\d+\.\d+\s?%": "a percentage with decimals (accuracy, error)",
    r"\d+(?:\.\d+)?(?:\s?[-–]\s?\d+(?:\.\d+)?)?\s?[x×]\s+(?:faster|slower|smaller|larger|bigger|fewer"
    r"|more|less|higher|lower)\b": "a speed or size ratio",
    r"\d+\.\d+\s?[x×](?![\w^])": "a decimal ratio (the tables print them as 0.63×)",
    r"\d[\d,]*(?:\.\d+)?\s?(?:img/s|it/s|samples/s|images/s)": "a throughput",
    r"\d+\.\d+\s?[KMG]i?B\b": "a file size with decimals",
    r"\d+(?:\.\d+)?\s?(?:min|ms)\b": "a measured duration",
    r"\d+\.\d+ points?\b": "an accuracy difference",
}

# Exceptions, each with its reason; keep it short (a paper's figure belongs in a table).
ALLOWED = {
    "ShuffleNet 0.5x": "the ShuffleNet width multiplier, a configuration",
    "ShuffleNet v1 0.5x": "the same width multiplier in the model list",
}


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the README outside table blocks and code fences."""
    lines = text.split("\n")
    inside = set()
    for b in rd.blocks(lines, README):
        inside.update(range(b.start, b.end + 1))
    out, fence = [], None
    for i, line in enumerate(lines):
        m = rd.FENCE.match(line)
        if m and fence is None:
            fence = m.group(1)
        elif m and line.strip().startswith(fence):
            fence = None
        elif fence is None and i not in inside:
            out.append((i + 1, line))
    return out


def measured_figures(lines: list[tuple[int, str]]) -> list[str]:
    found = []
    for n, line in lines:
        for allowed in ALLOWED:
            line = line.replace(allowed, "")
        for pattern, what in MEASURED.items():
            found += [f"README.md:{n}: {m.group(0)!r} looks like {what}: quote a table instead"
                      for m in re.finditer(pattern, line)]
    return found


def test_readme_prose_types_no_measured_figure():
    lines = prose(README.read_text(encoding="utf-8"))
    assert measured_figures(lines) == []
    text = "\n".join(line for _, line in lines)
    assert [a for a in ALLOWED if a not in text] == [], "an exception no longer needed: drop it"


def test_the_figure_check_catches_what_it_should():
    lines = list(enumerate(["reaches 89.42% vs 89.19%", "5-7x slower than FP32", "runs at 0.63× of FP32",
                            "1,763 img/s", "file 84.1 KB", "13.5 min", "lost 4.5 points",
                            "12 epochs, batch 32, 92/91/74%, 10,000 images, W2A2, ShuffleNet 0.5x"], 1))
    found = measured_figures(lines)
    assert [f.split(":")[1] for f in found] == ["1", "1", "2", "3", "4", "5", "6", "7"], found
    text = "a\n```\n89.42%\n```\n<!-- table: results/tables/seed_table.md -->\n| 1.00× |\n<!-- /table -->\nb 1.5%\n"
    assert [line for _, line in prose(text)] == ["a", "b 1.5%", ""]
