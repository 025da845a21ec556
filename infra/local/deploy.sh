#!/usr/bin/env bash
# A local production-like deployment: PostgreSQL + Airflow 3 (scheduler, dag-processor,
# api-server; the LocalExecutor, or the CeleryExecutor with a Redis broker and a Celery worker)
# running this repo's dags/, and an external Dask cluster (scheduler, one plain worker, GPU
# workers declaring --resources GPU=1).
#
#   bash infra/local/deploy.sh start DIR   # start everything; prints the env file to source
#   bash infra/local/deploy.sh stop DIR    # stop everything started in DIR (no process left)
#   bash infra/local/deploy.sh status DIR  # which of its processes run
#
# DIR holds AIRFLOW_HOME (airflow/), the logs (logs/), the pid files (pids/) and env.sh, the
# environment of the deployment (source it to run `airflow ...` against it). Settings (env):
#   TERRAPIPE_GPU_WORKERS  Dask workers started with --resources GPU=1 (default 1); the `gpu`
#                          Airflow pool gets that many slots
#   TERRAPIPE_DASK_NTHREADS, TERRAPIPE_DASK_MEMORY   threads and memory limit of each worker
#                          (default 2, 2GiB)
#   TERRAPIPE_EXECUTOR     local (default) or celery: Airflow's CeleryExecutor, tasks queued on
#                          a Redis broker and run by `airflow celery worker` processes
#   TERRAPIPE_CELERY_WORKERS  Celery workers started (default 1; each runs TERRAPIPE_PARALLELISM
#                          tasks at once)
#   TERRAPIPE_PARALLELISM  Airflow tasks run at once by the executor (default 4)
#   TERRAPIPE_CONFIG_DIR, TERRAPIPE_SCHEDULE, TERRAPIPE_START_DATE, TERRAPIPE_CATCHUP,
#   TERRAPIPE_MAX_ACTIVE_RUNS, TERRAPIPE_MAX_ACTIVE_TASKS, TERRAPIPE_TASK_TIMEOUT_MIN
#                          passed to the DAG processor (see operators/production.py)
#   VENV                   the Python environment with terrapipe[airflow] (default ./.venv)
#   TERRAPIPE_HEARTBEAT_TIMEOUT_S  seconds without a heartbeat after which the scheduler fails
#                          a running task (Airflow's default 300)
# PostgreSQL comes from pg_ctl/initdb on PATH or /usr/lib/postgresql/*/bin, Redis (celery only)
# from redis-server on PATH; when absent they are installed from the OS packages (apt-get).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}
BIN="$VENV/bin"
PY="$BIN/python"

usage() {
  echo "usage: bash infra/local/deploy.sh {start|stop|status} DIR" >&2
  exit 2
}

log() { echo "deploy: $*" >&2; }

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait up to $2 seconds for a TCP port $1 on 127.0.0.1 to accept connections.
wait_port() {
  local port=$1 limit=$2 i
  for ((i = 0; i < limit * 5; i++)); do
    if "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.5)" \
      2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

pg_bindir() {
  local dir
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x "$dir/pg_ctl" && -x "$dir/initdb" ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# Install an OS package ($1: what, $2: the package).
install_package() {
  log "$1 not found: installing it from the OS packages ($2)"
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "$2" >&2
}

redis_server() {
  command -v redis-server 2>/dev/null || {
    install_package Redis redis-server
    command -v redis-server
  }
}

# Run a PostgreSQL binary; as root, as the `postgres` user (PostgreSQL refuses to run as root).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# The `gpu` pool ($2 slots: one per GPU worker) and the `dask_default` connection (the Dask
# scheduler $1) in the metadata DB, as `airflow pools set` and `airflow connections add` would
# write them (the UI lists them; a deployment without AIRFLOW_CONN_DASK_DEFAULT in its
# environment reads the connection there): operators/provision.py, the step operations run.
provision() {
  "$PY" -m operators.provision "$1" --gpu-slots "$2"
}

# Start a command detached in its own session (process group), its pid in pids/NAME.pid.
spawn() {
  local name=$1
  shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name.pid"
}

start() {
  mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/airflow"
  if [[ -f "$DIR/env.sh" ]]; then
    log "$DIR already holds a deployment: stop it first"
    exit 1
  fi
  # A start that fails half way leaves nothing running.
  trap 'rc=$?; if ((rc != 0)); then log "start failed: stopping what started"; stop; fi' EXIT
  local executor=${TERRAPIPE_EXECUTOR:-local}
  case "$executor" in
    local | celery) ;;
    *)
      log "TERRAPIPE_EXECUTOR=$executor: expected local or celery"
      exit 2
      ;;
  esac
  local pgbin
  pgbin=$(pg_bindir) || {
    install_package PostgreSQL postgresql
    pgbin=$(pg_bindir)
  }

  # PostgreSQL: a fresh cluster on a free port, trust auth on 127.0.0.1 only.
  local pgdata pg_port
  pgdata="$DIR/pgdata"
  if [[ $(id -u) -eq 0 ]]; then
    # The postgres user may not reach DIR (e.g. a 0700 tmp folder): the data lives in /tmp.
    pgdata=$(mktemp -d /tmp/terrapipe-pgdata.XXXXXX)
    chown postgres "$pgdata"
  fi
  echo "$pgdata" >"$DIR/pids/pgdata.path"
  pg_port=$(free_port)
  as_pg "$pgbin/initdb" -D "$pgdata" -U airflow --auth=trust -E UTF8 >"$DIR/logs/initdb.log"
  as_pg "$pgbin/pg_ctl" -D "$pgdata" -w -t 60 -l "$pgdata/postgres.log" \
    -o "-p $pg_port -k $pgdata -c listen_addresses=127.0.0.1 -c max_connections=200" \
    start >"$DIR/logs/pg_ctl.log"
  echo "$pgbin" >"$DIR/pids/pgbin.path"
  as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$pg_port" -U airflow airflow

  # Dask: an external cluster, as operations run one.
  local dask_port gpu_workers nthreads memory i
  dask_port=$(free_port)
  gpu_workers=${TERRAPIPE_GPU_WORKERS:-1}
  nthreads=${TERRAPIPE_DASK_NTHREADS:-2}
  memory=${TERRAPIPE_DASK_MEMORY:-2GiB}
  spawn dask-scheduler "$BIN/dask" scheduler --host 127.0.0.1 --port "$dask_port" \
    --no-dashboard
  wait_port "$dask_port" 60 || {
    log "the Dask scheduler did not start (see $DIR/logs/dask-scheduler.log)"
    exit 1
  }
  local address="tcp://127.0.0.1:$dask_port"
  spawn dask-worker "$BIN/dask" worker "$address" --nthreads "$nthreads" \
    --memory-limit "$memory" --no-dashboard --name cpu-0
  for ((i = 0; i < gpu_workers; i++)); do
    spawn "dask-gpu-worker-$i" "$BIN/dask" worker "$address" --nthreads "$nthreads" \
      --memory-limit "$memory" --no-dashboard --name "gpu-$i" --resources GPU=1
  done

  # Celery: a Redis broker on a free port, nothing persisted (the queue lives as long as the
  # deployment); task states and results are in the metadata DB.
  local redis_port="" parallelism=${TERRAPIPE_PARALLELISM:-4}
  if [[ $executor == celery ]]; then
    local redis
    redis=$(redis_server)
    redis_port=$(free_port)
    mkdir -p "$DIR/redis"
    spawn redis "$redis" --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$DIR/redis"
    wait_port "$redis_port" 30 || {
      log "Redis did not start (see $DIR/logs/redis.log)"
      exit 1
    }
  fi

  # Airflow: the environment every Airflow process (and the tasks they start) shares.
  local api_port secret
  api_port=$(free_port)
  secret=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')
  {
    echo "export AIRFLOW_HOME='$DIR/airflow'"
    echo "export AIRFLOW__CORE__DAGS_FOLDER='$ROOT/dags'"
    if [[ $executor == celery ]]; then
      echo "export AIRFLOW__CORE__EXECUTOR=CeleryExecutor"
      echo "export AIRFLOW__CELERY__BROKER_URL='redis://127.0.0.1:$redis_port/0'"
      echo "export AIRFLOW__CELERY__RESULT_BACKEND='db+postgresql://airflow@127.0.0.1:$pg_port/airflow'"
      echo "export AIRFLOW__CELERY__WORKER_CONCURRENCY=$parallelism"
    else
      echo "export AIRFLOW__CORE__EXECUTOR=LocalExecutor"
    fi
    if [[ -n ${TERRAPIPE_HEARTBEAT_TIMEOUT_S:-} ]]; then
      echo "export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=$TERRAPIPE_HEARTBEAT_TIMEOUT_S"
    fi
    echo "export AIRFLOW__CORE__LOAD_EXAMPLES=False"
    echo "export AIRFLOW__CORE__PARALLELISM=$parallelism"
    echo "export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=120"
    echo "export AIRFLOW__CORE__EXECUTION_API_SERVER_URL='http://127.0.0.1:$api_port/execution/'"
    echo "export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True"
    echo "export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN='postgresql+psycopg2://airflow@127.0.0.1:$pg_port/airflow'"
    echo "export AIRFLOW__API__HOST=127.0.0.1"
    echo "export AIRFLOW__API__PORT=$api_port"
    echo "export AIRFLOW__API__BASE_URL='http://127.0.0.1:$api_port'"
    echo "export AIRFLOW__API_AUTH__JWT_SECRET='$secret'"
    echo "export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=10"
    echo "export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=2"
    echo "export AIRFLOW__LOGGING__BASE_LOG_FOLDER='$DIR/airflow/logs'"
    echo "export AIRFLOW_CONN_DASK_DEFAULT='dask://127.0.0.1:$dask_port'"
    echo "export TERRAPIPE_DASK_ADDRESS='$address'"
    echo "export TERRAPIPE_GPU_POOL_SLOTS=$gpu_workers"
    echo "export TERRAPIPE_DEPLOY_PG_PORT=$pg_port"
    printf 'export PYTHONPATH=%q\n' "$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    local name
    for name in TERRAPIPE_CONFIG_DIR TERRAPIPE_SCHEDULE TERRAPIPE_START_DATE TERRAPIPE_CATCHUP \
      TERRAPIPE_MAX_ACTIVE_RUNS TERRAPIPE_MAX_ACTIVE_TASKS TERRAPIPE_TASK_TIMEOUT_MIN \
      TERRAPIPE_HOME; do
      if [[ -n ${!name:-} ]]; then
        printf 'export %s=%q\n' "$name" "${!name}"
      fi
    done
  } >"$DIR/env.sh.tmp"
  mv "$DIR/env.sh.tmp" "$DIR/env.sh"
  # shellcheck source=/dev/null
  source "$DIR/env.sh"

  "$BIN/airflow" db migrate >"$DIR/logs/db-migrate.log" 2>&1 || {
    log "airflow db migrate failed (see $DIR/logs/db-migrate.log)"
    exit 1
  }
  # The servers start while the pool and the connection are written (one Python process).
  spawn airflow-api-server "$BIN/airflow" api-server --port "$api_port" --host 127.0.0.1 --workers 1
  spawn airflow-scheduler "$BIN/airflow" scheduler
  spawn airflow-dag-processor "$BIN/airflow" dag-processor
  if [[ $executor == celery ]]; then
    for ((i = 0; i < ${TERRAPIPE_CELERY_WORKERS:-1}; i++)); do
      spawn "airflow-celery-worker-$i" "$BIN/airflow" celery worker \
        --celery-hostname "celery-$i@%h" --concurrency "$parallelism"
    done
  fi
  provision "$address" "$gpu_workers" >"$DIR/logs/provision.log" 2>&1 || {
    log "provisioning the pool and the connection failed (see $DIR/logs/provision.log)"
    exit 1
  }
  wait_port "$api_port" 120 || {
    log "the Airflow api-server did not start (see $DIR/logs/airflow-api-server.log)"
    exit 1
  }
  trap - EXIT
  log "up: Airflow API http://127.0.0.1:$api_port ($executor executor), Dask $address," \
    "PostgreSQL port $pg_port${redis_port:+, Redis port $redis_port}"
  echo "$DIR/env.sh"
}

# SIGTERM process groups (pids of their leaders), then SIGKILL whatever of them is left after a
# grace period of 10 s.
# Pids of the processes whose environment holds this deployment's AIRFLOW_HOME.
deployment_pids() {
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    [[ $pid == "$$" ]] && continue
    if grep -qzxF "AIRFLOW_HOME=$DIR/airflow" "$environ" 2>/dev/null; then
      echo "$pid"
    fi
  done
}

stop_groups() {
  local pid i left
  for pid in "$@"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    left=0
    for pid in "$@"; do
      if kill -0 -- "-$pid" 2>/dev/null; then
        left=1
      fi
    done
    ((left)) || return 0
    sleep 0.2
  done
  for pid in "$@"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}

stop() {
  local file pgdata pgbin
  local airflow=() dask=()
  # Airflow first (it talks to Dask and PostgreSQL), then the Dask cluster, then PostgreSQL.
  for file in "$DIR"/pids/airflow-*.pid; do
    [[ -f $file ]] && airflow+=("$(cat "$file")")
  done
  for file in "$DIR"/pids/dask-*.pid; do
    [[ -f $file ]] && dask+=("$(cat "$file")")
  done
  ((${#airflow[@]} == 0)) || stop_groups "${airflow[@]}"
  ((${#dask[@]} == 0)) || stop_groups "${dask[@]}"
  [[ -f "$DIR/pids/redis.pid" ]] && stop_groups "$(cat "$DIR/pids/redis.pid")"
  rm -f "$DIR"/pids/airflow-*.pid "$DIR"/pids/dask-*.pid "$DIR/pids/redis.pid"
  # A task process that left the scheduler's process group still carries this AIRFLOW_HOME.
  local stray=()
  mapfile -t stray < <(deployment_pids)
  ((${#stray[@]} == 0)) || kill -KILL "${stray[@]}" 2>/dev/null || true
  if [[ -f "$DIR/pids/pgdata.path" ]]; then
    pgdata=$(cat "$DIR/pids/pgdata.path")
    pgbin=$(cat "$DIR/pids/pgbin.path" 2>/dev/null || pg_bindir || true)
    if [[ -f "$pgdata/postmaster.pid" && -n $pgbin ]]; then
      as_pg "$pgbin/pg_ctl" -D "$pgdata" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if [[ $pgdata == /tmp/terrapipe-pgdata.* ]]; then
      rm -rf "$pgdata"
    fi
    rm -f "$DIR/pids/pgdata.path" "$DIR/pids/pgbin.path"
  fi
  rm -f "$DIR/env.sh"
}

status() {
  local file pid state=0
  for file in "$DIR"/pids/*.pid; do
    [[ -f $file ]] || continue
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
      echo "$(basename "$file" .pid): running (pid $pid)"
    else
      echo "$(basename "$file" .pid): not running"
      state=1
    fi
  done
  return "$state"
}

[[ $# -eq 2 ]] || usage
cmd=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
