"""Every relative link in the Markdown documentation resolves (README.md, docs/, and any other tracked *.md).

Checked: inline links and images `[text](target)` and reference definitions `[label]: target`, outside fenced code
blocks and inline code. Skipped: absolute URLs (`scheme:...`, `//host`). A relative target must name a file or
folder inside the repository (never above its root, never a generated folder such as `data/` or `reports/`, which
a fresh clone does not have), and an `#anchor`, in-page or into another Markdown file, must name one of its
headings (GitHub's slugs).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]

#: Folders a fresh clone does not have: DVC outputs and local caches. Their Markdown is not checked, and a link into
#: them is broken for every reader but the one who ran the pipeline.
GENERATED = ("data", "reports", ".cache", ".venv", ".git", ".dvc", ".prefect", "mlartifacts", "mlruns")

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], one level of nested brackets
                         r"\(\s*(<[^>]*>|[^)\s]+)"  # (target or <target>
                         r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")  # optional "title")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
ABSOLUTE = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def _prose_lines(text: str) -> list[str]:
    """The file's lines with fenced code blocks blanked (line numbers stay the same)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            lines.append("")
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (repeats get -1, -2, ...) and HTML name/id anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(text):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    out = []
    for number, line in enumerate(_prose_lines(text), start=1):
        line = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        reference = REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        out.extend((number, t[1:-1] if t.startswith("<") else t) for t in targets)
    return out


def broken_links(md_file: Path, root: Path) -> list[str]:
    """One line per link of `md_file` that does not resolve inside `root`: `file:line: target: why`."""
    root = root.resolve()
    md_file = md_file.resolve()
    where = md_file.relative_to(root)
    problems = []
    for number, target in links(md_file.read_text(encoding="utf-8")):
        if not target or ABSOLUTE.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part)
        if not path_part:
            dest = md_file
        elif path_part.startswith("/"):  # GitHub resolves a leading slash against the repository root
            dest = (root / path_part.lstrip("/")).resolve()
        else:
            dest = (md_file.parent / path_part).resolve()
        if not dest.is_relative_to(root):
            problems.append(f"{where}:{number}: {target}: points outside the repository")
        elif dest.relative_to(root).parts and dest.relative_to(root).parts[0] in GENERATED:
            problems.append(f"{where}:{number}: {target}: a generated folder, absent from a fresh clone")
        elif not dest.exists():
            problems.append(f"{where}:{number}: {target}: no such file")
        elif anchor and dest.is_file() and dest.suffix == ".md" \
                and unquote(anchor).lower() not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{where}:{number}: {target}: no heading #{anchor} in {dest.relative_to(root)}")
    return problems


def markdown_files(root: Path) -> list[Path]:
    """README.md, docs/**/*.md and every other *.md git knows (tracked, or new and not ignored), minus generated."""
    found = {p for p in [root / "README.md", *root.glob("docs/**/*.md")] if p.is_file()}
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "*.md"],
                                cwd=root, capture_output=True, text=True, check=True).stdout
        found.update(root / name for name in listed.split("\0") if name)
    except (OSError, subprocess.CalledProcessError):  # no git: the documentation folders alone
        found.update(root.glob("bench/**/*.md"))
    return sorted(p for p in found if p.is_file() and p.relative_to(root).parts[0] not in GENERATED)


def test_every_relative_link_resolves():
    files = markdown_files(ROOT)
    assert ROOT / "README.md" in files and any(p.parent == ROOT / "docs" for p in files)
    problems = [problem for md in files for problem in broken_links(md, ROOT)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_checker_reports_planted_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# The guide\n\n## Two words\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "out.md").write_text("generated\n")
    readme = tmp_path / "README.md"
    readme.write_text("\n".join([
        "# Title",
        "[ok](docs/guide.md) [ok anchor](docs/guide.md#two-words) [here](#title) ![img](docs/)",
        "[web](https://example.org/x.md) [mail](mailto:a@b.c)",
        "`[in code](missing-inline.md)`",
        "```text",
        "[in a fence](missing-fenced.md)",
        "```",
        "[gone](docs/missing.md)",
        "[up](../outside.md)",
        "[bad anchor](docs/guide.md#nowhere)",
        "[bad local](#no-such-heading)",
        "[ref]: docs/also-missing.md",
        "[generated](data/out.md)",
    ]) + "\n")
    problems = broken_links(readme, tmp_path)
    assert problems == [
        "README.md:8: docs/missing.md: no such file",
        "README.md:9: ../outside.md: points outside the repository",
        "README.md:10: docs/guide.md#nowhere: no heading #nowhere in docs/guide.md",
        "README.md:11: #no-such-heading: no heading #no-such-heading in README.md",
        "README.md:12: docs/also-missing.md: no such file",
        "README.md:13: data/out.md: a generated folder, absent from a fresh clone",
    ]


def test_github_slugs():
    assert slug("8. The hypernetwork and the LoRA it makes") == "8-the-hypernetwork-and-the-lora-it-makes"
    assert slug("DVC: `make run` is `dvc repro`") == "dvc-make-run-is-dvc-repro"
    assert slug("GPU scale: paper-size models, several GPUs") == "gpu-scale-paper-size-models-several-gpus"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
