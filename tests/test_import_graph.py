"""What imports what: the gateway and the remote backends carry no TensorFlow; no import circles; arrows one way."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import VIDEOS_DIR, require_shared

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras")


def _loaded_in_fresh_process(code: str, tmp_path: Path, **env: str) -> list[str]:
    """Run `code` in a new interpreter; the heavy packages it left in `sys.modules`."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """)
    environment = os.environ | {"MESOSCAN_MODELS_DIR": str(tmp_path / "models")} | env
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gateway_imports_no_tensorflow(tmp_path):
    """The gateway app, built and answering the requests that touch the model registry, never loads TensorFlow."""
    loaded = _loaded_in_fresh_process(
        f"""
        from server.app import create_app
        from server.config import ServerSettings, Settings

        app = create_app(Settings.from_environment(server=ServerSettings(
            database_url="sqlite:///{tmp_path}/scans.db", broker_url="redis://127.0.0.1:6379/15", open_mode=True)))
        client = app.test_client()
        for path in ("/healthz", "/api/v1/models", "/api/v1/openapi.json"):
            response = client.get(path, headers={{"Host": "127.0.0.1"}})
            assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True))
        assert "meso4_dfdc" in client.get("/api/v1/models", headers={{"Host": "127.0.0.1"}}).get_json()["default"]
    """,
        tmp_path,
        MESOSCAN_MODEL_BACKEND="tfserving-grpc",
        MESOSCAN_TFSERVING_URL="127.0.0.1:8500",
    )
    assert loaded == []


def test_remote_predictors_import_no_tensorflow(tmp_path):
    """A scan worker on a remote backend builds its predictor (and imports the pipeline) without TensorFlow."""
    loaded = _loaded_in_fresh_process(
        """
        import scanner.pipeline
        import server.tasks
        from serving.config import ServingSettings
        from serving.predictor import get_predictor

        grpc = get_predictor(None, ServingSettings(model_backend="tfserving-grpc", tfserving_url="127.0.0.1:8500"))
        rest = get_predictor(None, ServingSettings(model_backend="tfserving-rest", tfserving_url="http://127.0.0.1:8501"))
        assert (grpc.backend, rest.backend) == ("tfserving-grpc", "tfserving-rest")
        grpc.close()
        rest.close()
    """,
        tmp_path,
    )
    assert loaded == []


def test_embedded_predictor_does_load_tensorflow_for_mesoinception(tmp_path):
    """The check above can see TensorFlow: the embedded backend loads it for models other than Meso-4."""
    loaded = _loaded_in_fresh_process(
        """
        from serving.config import ServingSettings
        from serving.predictor import get_predictor

        get_predictor("mesoinception4_dfdc", ServingSettings(model_backend="embedded")).close()
    """,
        tmp_path,
    )
    assert "tensorflow" in loaded and "keras" in loaded


def test_a_scan_with_the_default_model_imports_no_tensorflow(tmp_path):
    """`mesoscan scan` with Meso-4 (the default, meso4_dfdc) scores in numpy and resizes crops in numpy."""
    clip = require_shared(VIDEOS_DIR / "ffpp_519_515_DF.mp4")
    loaded = _loaded_in_fresh_process(
        f"""
        import contextlib, io, json, sys
        from serving.cli import main

        sys.argv = ["mesoscan", "scan", {str(clip)!r}, "--frames", "8", "--json"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main()
        document = json.loads(out.getvalue())
        assert document["status"] == "done" and document["model"]["name"] == "meso4_dfdc", document
        assert document["faces_analyzed"] > 0, document
    """,
        tmp_path,
    )
    assert loaded == []


PACKAGES = ("serving", "scanner", "server")
LAYER = {"server": 0, "scanner": 1, "serving": 2}
"""Arrows go from a lower number to a higher one only: server → scanner → serving."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every module of the three packages → the modules of theirs it imports, at module or function level."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in files)
        graph[name] = {t for t in targets if t in files and t != name and t.split(".")[0] in PACKAGES}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_import_graph_has_no_cycles():
    graph = import_graph()
    assert {"serving.predictor", "scanner.pipeline", "server.app"} <= graph.keys()
    assert "serving.backends.base" in graph["serving.predictor"]  # the walk sees imports
    assert "serving.metrics" in graph["serving.evaluate"]
    assert _cycles(graph) == KNOWN_CYCLES


KNOWN_CYCLES: list[list[str]] = []
"""None left (issue 20): a new cycle fails the test above."""


def test_import_arrows_go_server_scanner_serving():
    against = sorted(
        f"{source} → {target}"
        for source, targets in import_graph().items()
        for target in targets
        if LAYER[target.split(".")[0]] < LAYER[source.split(".")[0]]
    )
    assert against == []


def test_cycles_and_arrows_are_found():
    """The checks above can fail: a made-up graph with a circle and a backward arrow."""
    graph = {"serving.a": {"serving.b"}, "serving.b": {"serving.c"}, "serving.c": {"serving.a"}, "scanner.d": set()}
    assert _cycles(graph) == [["serving.a", "serving.b", "serving.c"]]
    assert _cycles({"serving.a": {"serving.b"}, "serving.b": set()}) == []
