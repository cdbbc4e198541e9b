#!/usr/bin/env bash
# Build the gpufleet wheel and sdist into dist/ (one distribution for agent, coordinator and CLI).
# Install on an agent host:        pip install 'gpufleet[nvml]'
# Install on a coordinator host:   pip install 'gpufleet[aws,gcp,azure]'   (only the clouds you use)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m pip wheel --no-deps -w dist . >/dev/null
ls -1 dist/gpufleet-*.whl
