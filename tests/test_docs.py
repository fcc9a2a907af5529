"""README.md, docs/ and .env.example say what the code does: every setting with its real default, commands and options
that exist, links that resolve, benchmark files that the benchmarks write.

The settings are checked against the classes themselves (each default written in the files is read back the way
MesoScan reads the environment), not against the generator that writes them; the generator's own output is checked
to be what is committed.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import click
import pytest

from tests.support import settings_docs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
ENV_LINE = {
    "default": re.compile(r"# (MESOSCAN_[A-Z0-9_]+)=(.*)"),
    "choice": re.compile(r"(MESOSCAN_[A-Z0-9_]+)=(.*)"),
    "described": re.compile(r"# (MESOSCAN_[A-Z0-9_]+) \(default: (.+)\)"),
}


def fields() -> dict[str, tuple[type, str]]:
    """MESOSCAN_<FIELD> -> (its settings class, the field name)."""
    return {
        f"MESOSCAN_{name.upper()}": (cls, name)
        for _, cls, _ in settings_docs.settings_classes()
        for name in cls.model_fields
    }


def read_back(monkeypatch, cls: type, field: str, value: str | None) -> object:
    """`field` of `cls` built from an environment holding only MESOSCAN_<FIELD>=value (or nothing)."""
    for name in [n for n in os.environ if n.upper().startswith("MESOSCAN_")]:
        monkeypatch.delenv(name)
    if value is not None:
        monkeypatch.setenv(f"MESOSCAN_{field.upper()}", value)
    return getattr(cls(), field)


def check_default(monkeypatch, env: str, shown: str, where: str) -> None:
    """`shown` (a value, `unset`, or a machine-dependent path in words) is env's real default."""
    cls, field = fields()[env]
    default = read_back(monkeypatch, cls, field, None)
    if shown == "unset":
        assert default is None, f"{where}: {env} is shown unset but defaults to {default!r}"
    elif "machine-dependent" in shown:
        assert shown.startswith(settings_docs._home(str(default))), f"{where}: {env} defaults to {default!r}"
    else:
        assert read_back(monkeypatch, cls, field, shown) == default, f"{where}: {env}={shown} is not its default"


def env_example() -> list[tuple[str, str, str, int]]:
    """(kind, name, value, line index) of each MESOSCAN_* line of .env.example."""
    found = []
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        for kind, pattern in ENV_LINE.items():
            if m := pattern.fullmatch(line):
                found.append((kind, m.group(1), m.group(2), i))
                break
    return found


def comment_above(lines: list[str], i: int) -> str:
    """The comment lines right above line i, up to the previous setting or blank line, as one text."""
    above: list[str] = []
    while i > 0 and lines[i - 1].startswith("# ") and not any(p.fullmatch(lines[i - 1]) for p in ENV_LINE.values()):
        i -= 1
        above.insert(0, lines[i].removeprefix("# "))
    return " ".join(above)


def test_env_example_lists_every_setting_once_with_its_default(monkeypatch):
    lines = (ROOT / ".env.example").read_text().splitlines()
    entries = env_example()
    counts = Counter(name for _, name, _, _ in entries)
    assert [n for n, c in counts.items() if c > 1] == [], "listed twice in .env.example"
    product = {name for name, _, _, reader in settings_docs.direct_settings() if reader == "product"}
    assert "MESOSCAN_API_KEY" in product
    missing = (set(fields()) | product) - set(counts)
    assert missing == set(), f".env.example lacks {sorted(missing)}"
    assert set(counts) - set(fields()) - product == set(), "not settings"
    for kind, name, value, i in entries:
        stated = re.search(r"Default: ([^;]+); (?:set here for docker compose|for example)", comment_above(lines, i))
        if name in product:
            assert kind == "described" and value == "unset"
        elif kind == "described" or (kind == "default" and not stated):
            check_default(monkeypatch, name, value, ".env.example")
        else:  # a choice for docker compose, or an example: its comment says the real default
            assert stated, f".env.example: {name}={value} does not say its default"
            check_default(monkeypatch, name, stated.group(1), ".env.example")


def configuration_rows() -> dict[str, str]:
    """variable -> default cell of docs/configuration.md's tables."""
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if m := re.match(r"\| `(MESOSCAN_[A-Z0-9_]+)` \| (.+?) \| ", line):
            assert m.group(1) not in rows, f"{m.group(1)} has two rows"
            rows[m.group(1)] = m.group(2)
    return rows


def test_configuration_table_has_every_setting_with_its_default(monkeypatch):
    rows = configuration_rows()
    direct = {name for name, *_ in settings_docs.direct_settings()}
    missing = (set(fields()) | direct) - set(rows)
    assert missing == set(), f"docs/configuration.md lacks {sorted(missing)}"
    assert set(rows) - set(fields()) - direct == set(), "rows for names nobody reads"
    for name in fields():
        shown = rows[name]
        value = m.group(1) if (m := re.fullmatch(r"`([^`]*)`", shown)) else shown.replace("`", "")
        check_default(monkeypatch, name, value, "docs/configuration.md")


def stated_default(text: str) -> str | None:
    """The value in a prose mention such as "(36,000: 10 min at 60 fps)" or "(64 KiB)"; None when it states none."""
    text = (
        " ".join(text.split()).removeprefix("default").lstrip(": ").split(";")[0].split(":")[0].split(" = ")[0].strip()
    )
    if m := re.fullmatch(r"([\d,]+)×([\d,]+)", text):
        return str(int(m.group(1).replace(",", "")) * int(m.group(2).replace(",", "")))
    if m := re.fullmatch(r"([\d,]+) KiB", text):
        return str(int(m.group(1).replace(",", "")) * 1024)
    if re.fullmatch(r"[\d,]+(\.\d+)?", text):
        return text.replace(",", "")
    return text if " " not in text else None  # `60/minute`, `unset`; words are no value


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_defaults_stated_in_prose_are_the_defaults(monkeypatch, page):
    """ "`MESOSCAN_MAX_FILESIZE_MB` (200)" anywhere in the documentation is the setting's real default."""
    known = fields()
    for name, text in re.findall(r"`(MESOSCAN_[A-Z0-9_]+)` \(([^)]*)\)", page.read_text()):
        if name in known and (value := stated_default(text)) is not None:
            check_default(monkeypatch, name, value, page.name)


def test_every_name_read_from_the_environment_is_documented():
    """A `MESOSCAN_*` name read with os.environ instead of a settings field is described (and still read)."""
    reads = set(settings_docs.direct_reads())
    direct = {name for name, *_ in settings_docs.direct_settings()}
    assert reads - set(fields()) - direct == set(), "read from os.environ but not documented"
    assert direct - reads == set(), "documented as read directly, but nothing reads it"
    import serving.config

    if hasattr(serving.config, "known_names"):  # every name the environment check accepts is documented
        assert set(serving.config.known_names()) - set(fields()) - direct == set()


def test_generated_files_are_up_to_date():
    assert settings_docs.main(["--check"]) == 0, "run: python -m tests.support.settings_docs"


def code_segments(text: str) -> list[str]:
    """The inline code spans and the lines of fenced code blocks of a Markdown page."""
    segments = []
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.findall(text):
        segments += [line.split(" #")[0] for line in block.splitlines()]
    segments += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", fenced.sub("", text))]
    return segments


def _subcommand(group: click.Group, name: str) -> click.Command | None:
    return group.get_command(click.Context(group), name)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_and_options_shown_exist(page):
    from serving.cli import cli

    shown = 0
    for segment in code_segments(page.read_text()):
        for piece in re.split(r"(?<![\w./-])(?=mesoscan )", segment)[1:]:
            words = piece.replace("\\|", "|").split()[1:]
            command: click.Command = cli
            while isinstance(command, click.Group) and words and re.fullmatch(r"[a-z][a-z0-9|-]*", words[0]):
                names = words.pop(0).split("|")
                found = [_subcommand(command, n) for n in names]
                assert all(found), f"{page.name}: `mesoscan ... {'|'.join(names)}`: no such command"
                if len(found) > 1:
                    break
                command = found[0]
            else:
                options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words)):
                    assert option in options, f"{page.name}: `{piece.strip()}`: {command.name} has no {option}"
            shown += 1
    if page == README:
        assert shown >= 3


def test_make_targets_shown_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    for page in PAGES:
        for segment in code_segments(page.read_text()):
            for target in re.findall(r"(?<![\w-])make ([a-z][a-z-]*)", segment):
                assert target in targets, f"{page.name}: `make {target}` is no Makefile target"
    assert {"setup", "test"} <= set(re.findall(r"make ([a-z]+)", README.read_text()))


def test_benchmark_result_files_named_are_written_by_a_benchmark():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests" / "bench").glob("*.py"))
    named = {n for page in PAGES for n in re.findall(r"bench/results/(\w+)\.json", page.read_text())}
    assert named, "docs/benchmarks.md lists the result files"
    for name in named:
        assert re.search(rf"""results(?:/|["'] / ["']){name}\.json""", sources), f"no benchmark writes {name}.json"


def slugs(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    seen: Counter[str] = Counter()
    found = set()
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in slugs(resolved), f"{page.name}: link to {target}: no such heading"


def test_readme_is_a_short_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    for page in DOCS:
        assert f"docs/{page.name}" in text, f"README.md does not link docs/{page.name}"
    for label in ("fake", "real", "uncertain", "no_face"):
        assert f"`{label}`" in text
    assert "docs/models-and-accuracy.md" in text
