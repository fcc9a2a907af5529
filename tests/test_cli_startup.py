"""`mesoscan` start-up: `--help` imports no subcommand's package; short commands show no native start-up lines and
their progress bar on a terminal; long-running commands keep stderr as it is."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
import threading
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

from serving.cli import SUMMARIES
from serving.quiet import NOISE
from tests.conftest import CROPS_DIR, ROOT, VIDEOS_DIR, require_shared

CLIP = VIDEOS_DIR / "ffpp_519_515_DF.mp4"
MESOSCAN = str(Path(sys.executable).with_name("mesoscan"))
COMMANDS = {ep.name: ep for ep in entry_points(group="mesoscan.commands")}
NOT_AT_HELP = ("scanner", "server", "gunicorn", "tensorflow", "keras", "celery", "flask")


def python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def mesoscan(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MESOSCAN, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


ON_CORES = """
    import sys
    from scanner import pipeline
    cores = int(sys.argv.pop(1))
    pipeline._cores = lambda: cores
    from serving.cli import main
    sys.argv[0] = "mesoscan"
    main()
"""


def scan_on(cores: int, *args: str) -> list[str]:
    """`mesoscan scan ARGS` as if the process had `cores` cores (one: the model loads first; two: beside the rest)."""
    return [sys.executable, "-c", textwrap.dedent(ON_CORES), str(cores), "scan", *args]


HELP = """
    import json, sys
    from importlib.metadata import entry_points
    if sys.argv[1] == "loaded":
        for point in entry_points(group="mesoscan.commands"):
            point.load()
    from serving.cli import main
    sys.argv = ["mesoscan", "--help"]
    main()
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {not_at_help!r})), file=sys.stderr)
"""


@pytest.mark.parametrize("columns", ["80", "200"])
def test_help_lists_every_command_without_importing_them(columns):
    lazy = python(HELP.format(not_at_help=NOT_AT_HELP), "lazy", COLUMNS=columns)
    assert lazy.returncode == 0, lazy.stderr
    assert json.loads(lazy.stderr.splitlines()[-1]) == []
    listed = re.findall(r"^  ([a-z-]+)  ", lazy.stdout.split("Commands:")[1], re.MULTILINE)
    assert listed == sorted(COMMANDS)
    # the same text as click's own listing made from the imported commands
    loaded = python(HELP.format(not_at_help=NOT_AT_HELP), "loaded", COLUMNS=columns)
    assert loaded.returncode == 0, loaded.stderr
    assert "scanner.cli" in json.loads(loaded.stderr.splitlines()[-1])
    assert lazy.stdout == loaded.stdout


def test_summaries_are_the_commands_own_help():
    assert set(SUMMARIES) == {name for name, ep in COMMANDS.items() if ep.module != "serving.cli"}
    for name, summary in SUMMARIES.items():
        command = COMMANDS[name].load()
        for width in (20, 45, 60, 74, 100, 400):
            assert click.Command(name, help=summary).get_short_help_str(width) == command.get_short_help_str(width)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_help_works(name):
    result = mesoscan(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: mesoscan {name} ")
    assert result.stderr == ""


@pytest.mark.parametrize("cores", [1, 2])
def test_scan_shows_no_native_startup_lines(cores):
    result = subprocess.run(
        scan_on(cores, str(require_shared(CLIP)), "--frames", "8", "--json"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "done"
    assert result.stderr == ""  # no progress bar either: stderr is no terminal


def test_evaluate_shows_no_native_startup_lines():
    result = mesoscan("evaluate", "--data", str(require_shared(CROPS_DIR)), "--split", "test")
    assert result.returncode == 0, result.stderr
    assert "ROC AUC" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("cores", [1, 2])
def test_scan_progress_bar_shows_on_a_terminal(cores):
    """stderr a terminal (a pty 100 columns wide): the progress bar is drawn there, and nothing else is."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    with subprocess.Popen(
        scan_on(cores, str(require_shared(CLIP)), "--frames", "8"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    ) as process:
        os.close(slave)
        stdout, _ = process.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    assert process.returncode == 0
    assert "timeline: " in stdout
    shown = [part.strip() for part in re.split(r"[\r\n]+", b"".join(chunks).decode()) if part.strip()]
    stages = {part.split()[0] for part in shown}
    assert {"fetch", "analyze"} <= stages, shown
    assert all(re.fullmatch(r"((fetch|analyze|classify)\s+)?[█▏▎▍▌▋▊▉ ]*\d+%", part) for part in shown), shown


QUIET_STATE = """
    import os, sys
    from serving import cli, quiet
    before = os.fstat(2)
    sys.argv = ["mesoscan", *sys.argv[1:]]
    cli.main()
    hooked = any(type(finder).__name__ == "_QuietTensorFlow" for finder in sys.meta_path)
    print(quiet._quiet, hooked, os.fstat(2) == before)
"""


@pytest.mark.parametrize(("command", "quiet"), [("serve", False), ("worker", False), ("scan", True), ("batch", True)])
def test_only_short_commands_filter_startup_lines(command, quiet):
    result = python(QUIET_STATE, command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == [str(quiet), str(quiet), "True"]


FILTERED = r"""
    import os, sys, threading
    from serving.quiet import native_output_filtered
    sys.stderr.write("before\n")
    with native_output_filtered():
        os.write(2, b"I0000 00:00:1796131940.355390   12081 port.cc:153] oneDNN custom operations are on.\n")
        sys.stderr.write("kept 1\n")
        other = threading.Thread(target=lambda: os.write(2, b"kept 2\n"))
        other.start(); other.join()
        with native_output_filtered():  # nested: one filter
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nkept 3\n")
        os.write(2, b"\rprogress 50%")
    sys.stderr.write("\nafter\n")
    print(os.readlink("/proc/self/fd/2"))
"""


def test_native_output_filtered_drops_only_noise_and_restores_fd2(tmp_path):
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(FILTERED)],
            cwd=ROOT,
            stderr=stderr,
            text=True,
            stdout=subprocess.PIPE,
            timeout=60,
        )
    assert done.returncode == 0
    assert log.read_bytes() == b"before\nkept 1\nkept 2\nkept 3\n\rprogress 50%\nafter\n"
    assert done.stdout.strip() == str(log)  # fd 2 is the file again, not a pipe
    assert not any(NOISE.match(line.encode()) for line in log.read_text().splitlines())
