# Sourced by the scripts: make (or reuse) the project's virtual environment and install into it.
# Usage: . scripts/_venv.sh EXTRAS   (EXTRAS like "" or "[dev]")
set -eu
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MODELTAP_VENV:-$root/.venv}
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.modeltap-installed${1:-}"
# Reinstalled when the build inputs change: the metadata, or the compiled extension's source
# (an editable install builds modeltap._speedups in place; a stale one would be imported).
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] \
  || [ "$root/src/modeltap/_speedups.c" -nt "$stamp" ]; then
  echo "installing modeltap${1:-} into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install --quiet -e "$root${1:-}"
  touch "$stamp"
fi
PY="$venv/bin/python"
