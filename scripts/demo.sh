#!/usr/bin/env bash
# Run modeltap's demo on a fresh machine: a virtual environment, the package, then `modeltap demo`
# (a model server with the modeltap sidecar in front of it; baseline, covariate-shift, recovery,
# concept-drift, prior-shift and new-version traffic with malformed requests, labels and business
# outcomes fed back; a live table, the status page, a summary).
# Arguments are passed on, e.g. scripts/demo.sh --duration 60 --rate 200
set -eu
. "$(dirname "$0")/_venv.sh" ""
exec "$venv/bin/modeltap" demo "$@"
