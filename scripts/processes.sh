#!/usr/bin/env bash
# gunicorn, the Celery worker and Celery beat in the background, with PID files and logs in .run/;
# `start-gateway` adds the demo's stand-in push gateway (`make demo`), which `stop` stops too.
#
#   scripts/processes.sh start | start-gateway | stop | status
#
# Reads DATABASE_URL and REDIS_URL from the environment, else from .run/env (the local servers).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN="$ROOT/.run"
VENV="$ROOT/.venv/bin"
PORT=${OPSLOOP_PORT:-8000}
GATEWAY_PORT=${OPSLOOP_DEMO_GATEWAY_PORT:-8099}
mkdir -p "$RUN"
cd "$ROOT"
if [ -z "${DATABASE_URL:-}" ] && [ -f "$RUN/env" ]; then set -a; . "$RUN/env"; set +a; fi
export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-config.settings.development}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

wait_for() {  # name, seconds
  local i
  for i in $(seq 1 $(($2 * 10))); do alive "$1" && return 0; sleep 0.1; done
  echo "[processes] $1 did not start; see $RUN/$1.log" >&2
  return 1
}

start() {
  if alive gunicorn; then echo "[processes] gunicorn already running" >&2; else
    "$VENV/gunicorn" config.wsgi:application --daemon --bind "127.0.0.1:$PORT" \
      --workers "${OPSLOOP_WEB_WORKERS:-3}" --pid "$RUN/gunicorn.pid" \
      --access-logfile "$RUN/gunicorn-access.log" --error-logfile "$RUN/gunicorn.log" --capture-output
    wait_for gunicorn 15
  fi
  if alive worker; then echo "[processes] worker already running" >&2; else
    # A detached process has no stderr: OPSLOOP_LOG_FILE sends every logger to the log file.
    OPSLOOP_LOG_FILE="$RUN/worker.log" "$VENV/celery" -A config worker --detach -Q default,deliveries,analytics \
      --concurrency "${OPSLOOP_WORKER_CONCURRENCY:-2}" -n "opsloop@%h" \
      --pidfile "$RUN/worker.pid" --logfile "$RUN/worker.log" --loglevel INFO
    wait_for worker 30
  fi
  if alive beat; then echo "[processes] beat already running" >&2; else
    OPSLOOP_LOG_FILE="$RUN/beat.log" "$VENV/celery" -A config beat --detach --pidfile "$RUN/beat.pid" --logfile "$RUN/beat.log" \
      --loglevel INFO
    wait_for beat 30
  fi
}

start_gateway() {
  if alive gateway; then echo "[processes] demo gateway already running" >&2; return 0; fi
  nohup "$VENV/python" -m demo.gateway --port "$GATEWAY_PORT" --log "$RUN/gateway-messages.jsonl" \
    >>"$RUN/gateway.log" 2>&1 </dev/null &
  echo $! >"$RUN/gateway.pid"
  local i
  for i in $(seq 1 50); do
    if "$VENV/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$GATEWAY_PORT/health', timeout=1)" \
      2>/dev/null; then return 0; fi
    alive gateway || break
    sleep 0.2
  done
  echo "[processes] demo gateway did not start; see $RUN/gateway.log" >&2
  return 1
}

stop_one() {
  local name=$1 pid i
  alive "$name" || { rm -f "$RUN/$name.pid"; return 0; }
  pid=$(cat "$RUN/$name.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  # The worker's pool children belong to the same process group; none may outlive it.
  pkill -KILL -g "$pid" 2>/dev/null || true
  rm -f "$RUN/$name.pid"
  echo "[processes] $name stopped" >&2
}

case "${1:-}" in
  start) start ;;
  start-gateway) start_gateway ;;
  stop) stop_one gateway; stop_one beat; stop_one worker; stop_one gunicorn ;;
  status) for n in gunicorn worker beat gateway; do alive "$n" && echo "$n running" || echo "$n stopped"; done ;;
  *) echo "usage: $0 start|start-gateway|stop|status" >&2; exit 2 ;;
esac
