"""The documentation: README.md is the front door, docs/ is the MkDocs site behind it.

An example in prose rots silently when a flag is renamed or a subcommand changes; here every
``whisper-tune ...`` line in a fenced code block of README.md or docs/*.md goes through the
real parser (:func:`whisper_tune.cli.build_parser`), every subcommand in
:data:`whisper_tune.cli.COMMANDS` must have an example on some page, and the site must build
with ``mkdocs build --strict`` (a broken link or heading anchor is an error there).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_tune.cli import COMMANDS, build_parser

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250  # the front door: what it is, the two commands, a tour, links; the rest is in docs/

# Example lines that are fragments on purpose and cannot parse, as "page: line". Keep it small
# and say why for each; an example that fails for any other reason is a bug in the docs.
UNPARSEABLE: dict[str, str] = {}

SHELL_OPERATORS = {"&&", "||", ";", "|"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def fenced_lines(text: str) -> list[str]:
    """The lines inside ``` fences, a shell continuation (a trailing backslash) joined to the next."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def commands_in(line: str) -> list[list[str]]:
    """The whisper-tune argument lists in one shell line: after `&&`-style operators are split,
    environment assignments dropped, and the program (`whisper-tune`, `.venv/bin/whisper-tune`,
    or `python -m whisper_tune.cli` as torchrun and accelerate launch run it) taken off."""
    tokens = shlex.split(line, comments=True)
    segments, current = [], []
    for token in tokens:
        if token in SHELL_OPERATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    found = []
    for segment in segments:
        while segment and ENV_ASSIGNMENT.match(segment[0]):
            segment = segment[1:]
        if segment and Path(segment[0]).name == "whisper-tune":
            found.append(segment[1:])
        elif "whisper_tune.cli" in segment and segment.index("whisper_tune.cli") > 0:
            at = segment.index("whisper_tune.cli")
            if segment[at - 1] == "-m":
                found.append(segment[at + 1 :])
    return found


def examples() -> list[tuple[str, str, list[str]]]:
    """(page, line, arguments) for every whisper-tune command in a fenced block of every page."""
    found = []
    for page in pages():
        name = page.relative_to(ROOT).as_posix()
        for line in fenced_lines(page.read_text(encoding="utf-8")):
            if "whisper-tune" not in line and "whisper_tune.cli" not in line:
                continue
            for argv in commands_in(line):
                found.append((name, line, argv))
    return found


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[dev]'")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    for page in DOCS.glob("*.md"):
        assert built_page(site, page.name).exists(), f"docs/{page.name} was not built into the site"
    # mkdocs checks the pages' own links; README.md is outside the site, so its anchors are checked here
    for name, anchor in re.findall(r"\]\(docs/([\w.-]+\.md)#([\w-]+)\)", README.read_text(encoding="utf-8")):
        html = built_page(site, name).read_text(encoding="utf-8")
        assert f'id="{anchor}"' in html, f"README.md links docs/{name}#{anchor}, a heading that page does not have"


def built_page(site: Path, name: str) -> Path:
    stem = Path(name).stem
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def test_every_docs_page_is_in_the_site_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert re.search(rf":\s*{re.escape(page.name)}\s*$", config, re.M), f"mkdocs.yml's nav lacks {page.name}"


def test_the_readme_is_short_and_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move detail to docs/"
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)(?:#[\w-]*)?\)", text))
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name not in linked)
    assert not missing, f"README.md links no docs page {missing}"
    assert "\n## Layout\n" in text  # a section other tests parse


def test_every_subcommand_has_an_example_in_the_docs():
    shown = {argv[0] for page, _, argv in examples() if page.startswith("docs/") and argv}
    missing = sorted(set(COMMANDS) - shown)
    assert not missing, f"no 'whisper-tune <cmd> ...' example in a fenced block of docs/*.md for {missing}"


def test_every_example_parses_with_the_real_parser():
    found = examples()
    assert {page for page, _, _ in found} >= {"README.md"}, "no example found in README.md"
    parser = build_parser()
    failures = []
    for page, line, argv in found:
        if f"{page}: {line}" in UNPARSEABLE:
            continue
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as done:
            if done.code != 0:  # 0 is --help
                failures.append(f"{page}: {line}\n    {stderr.getvalue().strip().splitlines()[-1:]}")
    assert not failures, "examples the CLI does not parse:\n" + "\n".join(failures)


def test_the_example_reader_joins_continuations_and_strips_prefixes():
    text = "```bash\nA=1 B=2 .venv/bin/whisper-tune train \\\n    --config x.yaml  # note\necho whisper-tune\n```\n"
    (line, other) = fenced_lines(text)
    assert commands_in(line) == [["train", "--config", "x.yaml"]]
    assert commands_in(other) == []
    assert commands_in("bash scripts/setup.sh && .venv/bin/whisper-tune demo") == [["demo"]]
    assert commands_in("torchrun --nproc_per_node 2 -m whisper_tune.cli train --config c.yaml") == [
        ["train", "--config", "c.yaml"]
    ]
