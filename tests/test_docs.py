"""The documentation in docs/ (and the README) names what the code has: every setting the code
reads, every slash command, every `muse` subcommand and flag; links resolve inside the project.

Pure file reads and regular expressions over the sources, so the checks hold wherever the
modules of bot/ and generation/ live (searched recursively)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ("README.md", "settings.md", "commands.md", "cli.md", "data.md")

SETTING = re.compile(r"""["']((?:MUSE|DISCORD)_[A-Z0-9_]+)["']""")
SLASH_COMMAND = re.compile(
    r"@app_commands\.command(?:\((?P<args>[^)]*)\))?(?P<between>.*?)async def (?P<fn>\w+)\(",
    re.DOTALL,
)
SUBCOMMAND = re.compile(r"""add_parser\(\s*["'](\w+)["']""")
FLAG = re.compile(r"""add_argument\(\s*["'](--[\w-]+)["']""")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


@cache
def sources(*packages: str) -> str:
    """Every Python file under the packages, concatenated."""
    return "\n".join(
        path.read_text(encoding="utf-8")
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
    )


@cache
def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def mentions(text: str, name: str) -> bool:
    """`name` as a whole identifier (MUSE_SHARDS is not in MUSE_SHARDS_X)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def settings_read() -> set[str]:
    return set(SETTING.findall(sources("bot", "generation")))


def slash_commands() -> set[str]:
    names = set()
    for match in SLASH_COMMAND.finditer(sources("bot")):
        explicit = re.search(r"""name\s*=\s*["'](\w+)["']""", match["args"] or "")
        names.add(explicit[1] if explicit else match["fn"])
    return names


def subcommands() -> set[str]:
    return set(SUBCOMMAND.findall(sources("bot")))


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_docs_pages_exist():
    for name in PAGES:
        assert (DOCS / name).is_file(), f"docs/{name} is missing"


def test_the_collectors_find_the_code():
    """A regex that stops matching (a file moved out of reach, a new spelling) fails here
    rather than letting the checks below pass on nothing."""
    assert {"DISCORD_TOKEN", "MUSE_DB", "MUSE_MODEL"} <= settings_read()
    assert {"story", "chat", "export", "settings", "help"} <= slash_commands()
    assert {"run", "console", "generate", "export", "stats", "backup", "doctor"} <= subcommands()


def test_every_setting_the_code_reads_is_documented():
    missing = sorted(name for name in settings_read() if not mentions(page("settings.md"), name))
    assert not missing, f"docs/settings.md does not describe {missing}"


def test_every_documented_setting_exists():
    """docs/settings.md names no setting that nothing reads (code or, for MUSE_TEST_*, tests)."""
    known = set(SETTING.findall(sources("bot", "generation", "tests")))
    documented = set(re.findall(r"\b(?:MUSE|DISCORD)_[A-Z0-9_]*[A-Z0-9]\b", page("settings.md")))
    unknown = sorted(documented - known)
    assert not unknown, f"docs/settings.md describes settings the code does not read: {unknown}"


def test_every_slash_command_is_documented():
    text = page("commands.md")
    missing = sorted(name for name in slash_commands() if f"`/{name}`" not in text)
    assert not missing, f"docs/commands.md does not describe {['/' + n for n in missing]}"


def test_every_muse_subcommand_and_flag_is_documented():
    text = page("cli.md")
    # a nested subcommand (`muse loop status`) counts under its group
    missing = sorted(
        name for name in subcommands() if not re.search(rf"muse (\w+ )?{name}\b", text)
    )
    assert not missing, f"docs/cli.md does not describe {['muse ' + n for n in missing]}"
    flags = set(FLAG.findall(sources("bot")))
    assert "--format" in flags
    undocumented = sorted(flag for flag in flags if not mentions(text, flag))
    assert not undocumented, f"docs/cli.md does not describe the flags {undocumented}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointer_outside_the_project(path: Path):
    text = path.read_text(encoding="utf-8")
    for outside in ("../shared", "/work/shared", "ARCHITECTURE.md"):
        assert outside not in text, f"{path.name} points at {outside}, which users do not have"


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    slugs: set[str] = set()
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in slugs:
            n += 1
            candidate = f"{slug}-{n}"
        slugs.add(candidate)
    return slugs


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_project(path: Path):
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name}: the link {target} points at nothing"
        assert linked.is_relative_to(ROOT), f"{path.name}: {target} leaves the project"
        if fragment and linked.suffix == ".md":
            assert fragment in anchors(linked), f"{path.name}: {target} has no such heading"


def test_the_docs_index_links_every_page():
    index = page("README.md")
    for other in sorted(DOCS.glob("*.md")):
        if other.name != "README.md":
            assert f"]({other.name})" in index, f"docs/README.md does not link {other.name}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/" in readme, "README.md does not point to docs/"
