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
# The run writes checkpoints, clips and Ray's logs under /tmp and the checkout: say up front how much room there is,
# so a "No space left on device" later reads as the machine's, not the code's.
free_mb=$(df -Pm "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
echo "scripts/test.sh: ${free_mb} MB free under ${TMPDIR:-/tmp}"
if [ "${free_mb:-0}" -lt 3000 ]; then
  echo "scripts/test.sh: warning: under 3 GB free; the suite's Ray and checkpoint tests may fail with ENOSPC" >&2
fi
if ! .venv/bin/lint-imports --no-logo; then
  echo "import contracts broken (lint-imports, see pyproject.toml [tool.importlinter]): failing" >&2
  exit 1
fi
# Two pytest workers (pytest-xdist), one a core of the 2-core machines CI and a first try run on: about a third of
# a one-process run leaves a core idle (one test's numpy on one core, Ray and Serve starting, a subprocess loading).
# --dist loadfile keeps a module's tests on one worker, so its module fixtures (a Serve app, a Ray head, a render
# group) start once. WAN_DIST_TEST_WORKERS=0 runs everything in this process (pdb, -s, a quieter machine).
workers="${WAN_DIST_TEST_WORKERS:-2}"
.venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
