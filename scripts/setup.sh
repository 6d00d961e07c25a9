#!/usr/bin/env bash
# Creates .venv and installs wan-dist with its test dependencies. Idempotent: a stamp holding the
# hash of everything that decides the install makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${WAN_DIST_VENV:-.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.wan-dist-setup"
want="$(cat pyproject.toml requirements/constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/wan-dist" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; anything looser pulls a CUDA build.
# One resolver run for everything (installing moto later breaks s3fs's botocore pin).
DS_BUILD_OPS=0 "$venv/bin/python" -m pip install -q -c requirements/constraints.txt torch==2.13.0 -e ".[dev,train]"
echo "$want" > "$stamp"
echo "wan-dist installed in $venv"
