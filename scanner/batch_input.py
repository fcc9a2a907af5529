"""A batch's input: rows read from a text list, a CSV or JSONL (or standard input), and each row's scan target.

Formats (by `--format` or the file's extension; standard input is JSONL when its first non-blank character is `{`,
else a text list):
- `txt`: one URL per line; blank lines and lines starting with `#` are skipped;
- `csv`: a header row with a `url` column; every other column is kept and carried to the outputs;
- `jsonl`: one JSON object per line with a `url` key, plus any other keys.

A row's `number` is where a person finds it: the line number for text and JSONL, the spreadsheet row for CSV
(the header is row 1). A row that cannot be scanned (empty cell, not a URL, unsupported scheme, a line that is
not JSON) becomes a failed item with `invalid_url`; only an unreadable or empty input is an error of its own.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scanner.errors import InvalidUrlError, ScanError
from scanner.netguard import DEFAULT_PORTS

Format = Literal["txt", "csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("txt", "csv", "jsonl")
_EXTENSIONS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "txt", ".list": "txt"}
MAX_ROWS = 100_000
"""Rows one batch may hold (a bound on the work and memory of one run)."""
MAX_URL_LENGTH = 2048

# Query parameters that only track where a click came from; they never change the video. Exact names (and the
# `utm_` family) only: a prefix such as `si` would also drop `sig`, `signature`, `size`, `site` or `sid`, which
# tell signed CDN URLs of different videos apart.
_TRACKING_PREFIXES = ("utm_",)
_TRACKING_NAMES = frozenset(
    {"fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid", "si"}
)


def _is_tracking(name: str) -> bool:
    name = name.lower()
    return name in _TRACKING_NAMES or name.startswith(_TRACKING_PREFIXES)


class InputError(Exception):
    """The input as a whole cannot be used (unreadable, not UTF-8, empty, no `url` column): nothing is scanned."""


@dataclass
class Row:
    number: int
    fields: dict[str, Any]
    """The row's own fields as read (CSV cells are strings; JSONL values keep their JSON types)."""
    url: Any
    """The `url` cell as given (None when missing)."""
    problem: str | None = None
    """Why the row cannot be read at all (e.g. a JSONL line that is not an object)."""


@dataclass(frozen=True)
class Target:
    kind: Literal["url", "file"]
    value: str
    """The URL (stripped) or the local file's absolute path."""
    key: str
    """The normalised URL (or the file's path): rows with the same key are scanned once."""


@dataclass
class BatchInput:
    rows: list[Row]
    format: Format
    columns: list[str] = field(default_factory=list)
    """The input's own columns, in order (CSV header, first-seen JSONL keys, `url` for a text list)."""


def normalize_url(url: str) -> str:
    """The form used to recognise the same video: scheme and host lowercased, default port, fragment and tracking
    parameters dropped, query parameters sorted. Assumes an http(s) URL that passed the URL policy (the gateway
    de-duplicates with the same rules)."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{parts.port}"
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{userinfo}@{netloc}"
    query = sorted(
        (k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)
    )
    return urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", urllib.parse.urlencode(query), ""))


def _looks_like_url(text: str) -> bool:
    scheme, sep, _ = text.partition(":")
    return (
        bool(sep)
        and scheme.isascii()
        and scheme[:1].isalpha()
        and len(scheme) > 1
        and (all(c.isalnum() or c in "+.-" for c in scheme))
    )


def _check_form(url: str) -> None:
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise InvalidUrlError("the URL contains spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        raise InvalidUrlError(f"malformed URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidUrlError(f"only http and https URLs are accepted, not {parts.scheme.lower()}://")
    if not parts.hostname:
        raise InvalidUrlError("the URL has no host")


def target_for(row: Row, policy, allow_local: bool) -> Target:
    """The row's scan target; raises ScanError (`invalid_url`, `blocked_address`) with the row number in the
    message. `policy` is the scanner's AddressPolicy (literal addresses checked, no DNS) or None to check the
    form only (a gateway applies its own policy)."""
    try:
        if row.problem is not None:
            raise InvalidUrlError(row.problem)
        raw = row.url
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise InvalidUrlError("the url cell is empty")
        if not isinstance(raw, str):
            raise InvalidUrlError(f"the url is not text but {json.dumps(raw)[:60]}")
        text = raw.strip()
        if len(text) > MAX_URL_LENGTH:
            raise InvalidUrlError(f"the URL is longer than {MAX_URL_LENGTH} characters")
        if _looks_like_url(text):
            _check_form(text)
            if policy is not None:
                policy.check_url(text)
            return Target("url", text, normalize_url(text))
        if allow_local:
            path = Path(text).expanduser()
            if path.is_file():
                resolved = str(path.resolve())
                return Target("file", resolved, resolved)
            raise InvalidUrlError(f"{text[:200]!r} is neither an http(s) URL nor an existing file")
        raise InvalidUrlError(f"{text[:200]!r} is not an http(s) URL (local files are never sent to a gateway)")
    except ScanError as exc:
        exc.message = f"row {row.number}: {exc.message}"
        raise


def _format_of(source: str, text: str, given: Format | None) -> Format:
    if given is not None:
        return given
    if source == "-":
        first = text.lstrip()[:1]
        return "jsonl" if first == "{" else "txt"
    return _EXTENSIONS.get(Path(source).suffix.lower(), "txt")


def _read_text(source: str) -> str:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _text_rows(text: str) -> tuple[list[Row], list[str]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            rows.append(Row(number, {"url": stripped}, stripped))
    return rows, ["url"]


def _csv_rows(text: str, source: str) -> tuple[list[Row], list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return [], []
    names = [name.strip() for name in header]
    lowered = [name.lower() for name in names]
    if "url" not in lowered:
        raise InputError(f"{source}: the CSV has no `url` column (columns: {', '.join(names) or 'none'})")
    url_at = lowered.index("url")
    rows = []
    for index, cells in enumerate(reader):
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        cells = cells + [""] * (len(header) - len(cells))  # cells beyond the header have no column: dropped
        fields = {name: cells[i] for i, name in enumerate(header)}
        rows.append(Row(index + 2, fields, cells[url_at]))
    return rows, list(header)


def _jsonl_rows(text: str) -> tuple[list[Row], list[str]]:
    rows, columns = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(Row(number, {}, None, problem=f"not a JSON line ({exc.msg})"))
            continue
        if not isinstance(value, dict):
            rows.append(Row(number, {}, None, problem="not a JSON object"))
            continue
        columns.update(dict.fromkeys(value))
        rows.append(Row(number, value, value.get("url")))
    return rows, list(columns) or ["url"]


def read_input(source: str, given: Format | None = None) -> BatchInput:
    """Read `source` (a path, or `-` for standard input); raises InputError when it cannot be used."""
    if source != "-" and Path(source).is_dir():
        raise InputError(f"{source} is a directory, not a list of URLs")
    text = _read_text(source)
    fmt = _format_of(source, text, given)
    if fmt == "csv":
        rows, columns = _csv_rows(text, source)
    elif fmt == "jsonl":
        rows, columns = _jsonl_rows(text)
    else:
        rows, columns = _text_rows(text)
    if not rows:
        raise InputError(f"{'standard input' if source == '-' else source} holds no rows to scan")
    if len(rows) > MAX_ROWS:
        raise InputError(f"{source} holds {len(rows)} rows; a batch holds at most {MAX_ROWS} (split it)")
    return BatchInput(rows, fmt, columns)
