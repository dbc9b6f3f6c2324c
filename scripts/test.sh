#!/usr/bin/env bash
# The whole check, as CI runs it: lint, formatting, types, then the tests (slow ones and the
# real-backend end-to-end ones excluded: run those with  scripts/test.sh -m backends).
# Arguments are passed to pytest, e.g. scripts/test.sh -k otlp   or   scripts/test.sh -m slow
set -eu
. "$(dirname "$0")/_venv.sh" "[dev]"
cd "$root"
"$venv/bin/ruff" check src tests examples bench
"$venv/bin/ruff" format --check src tests examples bench
"$venv/bin/mypy"
if [ $# -eq 0 ]; then
  set -- -m "not slow and not backends"
fi
"$PY" -m pytest "$@"
