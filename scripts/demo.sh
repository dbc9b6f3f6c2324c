#!/usr/bin/env bash
# Run modeltap's demo on a fresh machine: a virtual environment, the package, then
# `modeltap demo` (a model server behind modeltap, baseline then drifted traffic).
# Arguments are passed on, e.g. scripts/demo.sh --duration 60 --rate 200
set -eu
. "$(dirname "$0")/_venv.sh" ""
exec "$venv/bin/modeltap" demo "$@"
