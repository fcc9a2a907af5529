"""What each entry point imports: the gateway and the remote backends carry no TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras")


def _loaded_in_fresh_process(code: str, tmp_path: Path, **env: str) -> list[str]:
    """Run `code` in a new interpreter; the heavy packages it left in `sys.modules`."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """)
    environment = os.environ | {"MESOSCAN_MODELS_DIR": str(tmp_path / "models")} | env
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gateway_imports_no_tensorflow(tmp_path):
    """The gateway app, built and answering the requests that touch the model registry, never loads TensorFlow."""
    loaded = _loaded_in_fresh_process(f"""
        from server.app import create_app
        from server.config import ServerSettings

        app = create_app(ServerSettings(database_url="sqlite:///{tmp_path}/scans.db",
                                        broker_url="redis://127.0.0.1:6379/15", open_mode=True))
        client = app.test_client()
        for path in ("/healthz", "/api/v1/models", "/api/v1/openapi.json"):
            response = client.get(path, headers={{"Host": "127.0.0.1"}})
            assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True))
        assert "meso4_dfdc" in client.get("/api/v1/models", headers={{"Host": "127.0.0.1"}}).get_json()["default"]
    """, tmp_path, MESOSCAN_MODEL_BACKEND="tfserving-grpc", MESOSCAN_TFSERVING_URL="127.0.0.1:8500")
    assert loaded == []


def test_remote_predictors_import_no_tensorflow(tmp_path):
    """A scan worker on a remote backend builds its predictor (and imports the pipeline) without TensorFlow."""
    loaded = _loaded_in_fresh_process("""
        import scanner.pipeline
        import server.tasks
        from serving.config import ServingSettings
        from serving.predictor import get_predictor

        grpc = get_predictor(settings=ServingSettings(model_backend="tfserving-grpc", tfserving_url="127.0.0.1:8500"))
        rest = get_predictor(settings=ServingSettings(model_backend="tfserving-rest",
                                                      tfserving_url="http://127.0.0.1:8501"))
        assert (grpc.backend, rest.backend) == ("tfserving-grpc", "tfserving-rest")
        grpc.close()
        rest.close()
    """, tmp_path)
    assert loaded == []


def test_embedded_predictor_does_load_tensorflow(tmp_path):
    """The check above can see TensorFlow: the embedded backend does load it."""
    loaded = _loaded_in_fresh_process("""
        from serving.config import ServingSettings
        from serving.predictor import get_predictor

        get_predictor(settings=ServingSettings(model_backend="embedded")).close()
    """, tmp_path)
    assert "tensorflow" in loaded and "keras" in loaded
