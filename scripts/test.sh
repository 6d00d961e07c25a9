#!/usr/bin/env bash
# Runs the import contracts (lint-imports, pyproject.toml's [tool.importlinter]) and then the test suite in .venv.
# A broken contract fails the run before any test starts. pytest's exit code 5 ("no tests collected") is an
# error here: a suite that silently runs nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Ray: never token auth in tests (RUNTIME_NOTES); deepspeed builds its ops into the venv, not ~/.cache.
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TORCH_EXTENSIONS_DIR="$PWD/.venv/torch_extensions"
# Ray starts its workers at niceness 15: beside any other busy process on the machine they get a few percent of
# a core and every Ray test crawls (issue 21). Tests run them at the niceness of everything else.
export RAY_worker_niceness=0
if ! .venv/bin/lint-imports --no-logo; then
  echo "import contracts broken (lint-imports, see pyproject.toml [tool.importlinter]): failing" >&2
  exit 1
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
