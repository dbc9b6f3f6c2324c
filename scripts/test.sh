#!/usr/bin/env bash
# The whole check, as CI runs it: lint, formatting, types, then the tests, spread over the cores
# (slow ones and the real-backend end-to-end ones excluded: run those with
# scripts/test.sh -m backends).
# Arguments are passed to pytest, e.g. scripts/test.sh -k otlp   or   scripts/test.sh -m slow
set -eu
. "$(dirname "$0")/_venv.sh" "[dev]"
cd "$root"
"$venv/bin/ruff" check src tests examples bench
"$venv/bin/ruff" format --check src tests examples bench
"$venv/bin/mypy"
if [ $# -eq 0 ]; then
  # One pytest worker per core (PYTEST_XDIST_AUTO_NUM_WORKERS=N sets how many; 0 runs the tests
  # in this process). Tests take their ports from the kernel and their monitors are keyed by
  # process, so workers do not meet; "worksteal" keeps every core busy to the end of the run.
  set -- -n auto --dist worksteal -m "not slow and not backends"
fi
"$PY" -m pytest "$@"
