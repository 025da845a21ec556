#!/usr/bin/env bash
# One entry point for a fresh machine: set up the environment, then run the demo or the tests.
#   bash infra/dev.sh demo   # demo province end to end (archive, local STAC API, Airflow run)
#   bash infra/dev.sh test   # lint + the full test suite
#   bash infra/dev.sh setup  # only (re)create .venv
#   bash infra/dev.sh lock   # re-pin infra/constraints.txt to the newest versions setup.cfg admits
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
# Every dependency's version, as CI last tested them: installs take them as constraints (as
# Airflow's own install does), so a release of any of them changes nothing until `lock` is run.
CONSTRAINTS="$ROOT/infra/constraints.txt"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

setup() {
  # `.[test]` holds both optional extras (ml: torch, airflow); the torch CPU wheel lies in the
  # folder pip's own configuration names (find-links).
  local links
  links=$("$PY" -m pip config get global.find-links 2>/dev/null || true)
  local stamp="$VENV/.terrapipe-installed"
  browser
  if [[ -f "$stamp" && "$stamp" -nt setup.cfg && "$stamp" -nt "$CONSTRAINTS" ]]; then
    return 0
  fi
  if ! command -v uv >/dev/null 2>&1; then
    "$PY" -m pip install -q uv >/dev/null 2>&1 || true
  fi
  if command -v uv >/dev/null 2>&1; then
    [[ -x "$VENV/bin/python" ]] || uv venv -q --python "$PY" "$VENV"
    uv pip install -q --python "$VENV/bin/python" ${links:+--find-links "$links"} \
      -c "$CONSTRAINTS" -e '.[test]'
  else
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q ${links:+--find-links "$links"} -c "$CONSTRAINTS" \
      -e '.[test]'
  fi
  # Bytecode once, at install: with PYTHONDONTWRITEBYTECODE set (as in many CI images) every new
  # process (Airflow task, Dask worker, CLI) would otherwise compile the whole stack again, about
  # 15 s of imports per process on 2 cores instead of 5. Some packages ship files that are not
  # Python 3.11 (templates, fixtures): compileall names them and goes on.
  "$VENV/bin/python" -m compileall -q -j 0 "$VENV"/lib/python3*/site-packages pipelines operators \
    models dags >/dev/null || true
  touch "$stamp"
}

lock() {
  # The newest versions setup.cfg admits, for Python 3.11 on this platform. torch is pinned
  # without its local label (+cpu), so the GPU image's CUDA build of the same version matches.
  local links
  links=$("$PY" -m pip config get global.find-links 2>/dev/null || true)
  command -v uv >/dev/null 2>&1 || "$PY" -m pip install -q uv
  uv pip compile -q setup.cfg --extra test ${links:+--find-links "$links"} --python-version 3.11 \
    --upgrade --custom-compile-command "bash infra/dev.sh lock" -o "$CONSTRAINTS"
  sed -i -E 's/^(torch==[^+ ]+)\+[A-Za-z0-9.]+/\1/' "$CONSTRAINTS"
}

browser() {
  # The browser tests drive the system Chromium (Debian's chromium package, /usr/bin/chromium);
  # without apt they skip, naming the package to install.
  [[ -x /usr/bin/chromium ]] && return 0
  command -v apt-get >/dev/null 2>&1 || {
    echo "no apt-get: install Chromium as /usr/bin/chromium for the browser tests" >&2
    return 0
  }
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "could not install chromium: the browser tests will skip" >&2
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup)
    setup
    ;;
  lock)
    lock
    ;;
  test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    # Two workers, one test module each at a time (module fixtures stay in one process):
    # integration tests wait on subprocesses and servers much of the time. A worker that dies
    # (a crash in native code, or pytest-timeout ending a hung test) ends the run and names the
    # test it was running: pytest-xdist 3.8 can wait forever for a replacement worker under
    # --dist loadfile (pytest-xdist issues 784 and 1327).
    exec "$VENV/bin/python" -m pytest -n "${TERRAPIPE_TEST_WORKERS:-2}" --dist loadfile \
      --max-worker-restart 0 --durations 15 "$@"
    ;;
  demo)
    setup
    exec "$VENV/bin/terrapipe" demo "$@"
    ;;
  *)
    echo "usage: bash infra/dev.sh {demo|test|setup|lock} [args...]" >&2
    exit 2
    ;;
esac
