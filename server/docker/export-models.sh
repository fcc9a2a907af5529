#!/bin/sh
# One-shot: export every registered model as a SavedModel into the shared volume (/models), with TF Serving's
# models.config and batching.config beside them. Safe to run again: exports are replaced atomically.
set -eu
out="${MODELS_VOLUME:-/models}"
mesoscan export --all --out "$out" --write-config "$out/models.config" --base-path "$out"
python -c "import shutil, sys; from serving.tfserving_config import BATCHING_CONFIG; shutil.copyfile(BATCHING_CONFIG, sys.argv[1])" "$out/batching.config"
echo "models exported to $out"
