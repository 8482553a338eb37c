#!/usr/bin/env bash
# Project-local PostgreSQL and Redis for development and tests.
#
#   scripts/services.sh start    start both (idempotent), write .run/env
#   scripts/services.sh stop     stop both (idempotent)
#   scripts/services.sh status
#   scripts/services.sh start-replica   also a streaming replica of PostgreSQL (idempotent)
#   scripts/services.sh stop-replica    stop the replica only (`stop` stops it too)
#
# Both servers listen on 127.0.0.1 on ports of their own and keep their data under .run/, so
# nothing system-wide is started, stopped or changed. PostgreSQL refuses to run as root: when we
# are root the cluster belongs to the unprivileged `postgres` user instead.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN="$ROOT/.run"
# Ports chosen when the servers were first set up stay theirs, unless named explicitly again.
if [ -f "$RUN/ports" ]; then . "$RUN/ports"; fi
PG_PORT=${OPSLOOP_PG_PORT:-${SAVED_PG_PORT:-54329}}
REDIS_PORT=${OPSLOOP_REDIS_PORT:-${SAVED_REDIS_PORT:-63799}}
REPLICA_PORT=${OPSLOOP_PG_REPLICA_PORT:-${SAVED_PG_REPLICA_PORT:-$((PG_PORT + 1))}}
REPLICATION_USER=opsloop_replicator
# The physical replication slot the replica streams through: the primary keeps the WAL the
# replica has not received yet (a bench or demo writing gigabytes while it is down or slow),
# instead of recycling it and leaving a copy that can only be made again.
REPLICATION_SLOT=opsloop_replica
PG_USER=opsloop
PG_DB=opsloop

log() { printf '[services] %s\n' "$*" >&2; }

apt_install() {
  # Only on Debian-like systems and only as root; everywhere else say what is missing.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
  else
    log "missing: $*. Install it with your system's package manager"
    log "  (Debian/Ubuntu: sudo apt-get install $*; macOS: brew install ${1%-server})"
    exit 1
  fi
}

pg_bindir() {
  local d
  if command -v pg_config >/dev/null && d=$(pg_config --bindir 2>/dev/null) && [ -x "$d/initdb" ]; then
    echo "$d"; return
  fi
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

as_owner() {
  # Run a PostgreSQL tool as the cluster's owner, from a directory that owner can enter.
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_datadir() {
  # The cluster lives under .run/ unless the `postgres` user cannot reach it (a checkout under
  # /root, say): then it lives in /tmp under a name derived from the checkout, linked from .run/.
  # `pg_datadir pg-replica` places the replica's the same way.
  local name=${1:-pg}
  local d="$RUN/$name"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$RUN" 2>/dev/null; then
    local alt="/tmp/opsloop-$name-$(printf '%s' "$ROOT" | md5sum | cut -c1-12)"
    mkdir -p "$alt"
    [ -L "$d" ] || { rm -rf "$d"; ln -s "$alt" "$d"; }
    echo "$alt"; return
  fi
  echo "$d"
}

start_pg() {
  local bin data
  bin=$(pg_bindir) || { apt_install postgresql; bin=$(pg_bindir); }
  data=$(pg_datadir)
  mkdir -p "$data"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$data"; fi
  chmod 700 "$data"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $data"
    as_owner "$bin/initdb" -D "$data" -U "$PG_USER" --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  # Our settings live in a file of their own, written at every start, so that a cluster made by
  # an earlier checkout gets the current ones too (the last setting of a name wins).
  grep -q "^include_if_exists = 'opsloop.conf'" "$data/postgresql.conf" ||
    echo "include_if_exists = 'opsloop.conf'" >>"$data/postgresql.conf"
  if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    choose_port PG_PORT OPSLOOP_PG_PORT PostgreSQL
  fi
  # max_wal_size: a recompute of every customer's value writes a few GB of rows and indexes; at
  # the 1GB default it forced a checkpoint every 20 s and each one made it write whole pages again.
  cat >"$data/opsloop.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
fsync = ${OPSLOOP_PG_FSYNC:-on}
max_connections = 200
shared_buffers = 256MB
work_mem = 32MB
maintenance_work_mem = 256MB
max_wal_size = 4GB
CONF
  if [ "$(id -u)" = 0 ]; then chown postgres: "$data/opsloop.conf"; fi
  if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$data" reload >/dev/null
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT (settings reloaded)"
  else
    as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 -o "-p $PG_PORT" start >/dev/null
    log "PostgreSQL started on 127.0.0.1:$PG_PORT"
  fi
  local i
  for i in $(seq 1 50); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.2
  done
  if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
  fi
}

stop_pg() {
  local bin data="$RUN/pg"
  bin=$(pg_bindir) || return 0
  [ -e "$data/PG_VERSION" ] || return 0
  if as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    log "PostgreSQL stopped"
  fi
}

# --- a streaming replica of the cluster above (docs/deploy.md) -----------------------------------

psql_primary() {
  "$(pg_bindir)/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1 -tAq "$@"
}

psql_replica() {
  "$(pg_bindir)/psql" -h 127.0.0.1 -p "$REPLICA_PORT" -U "$PG_USER" -d postgres -tAq "$@"
}

replica_log() {
  # The replica's own log, beside its data directory: the copy's server.log is the primary's.
  printf '%s.log' "$(pg_datadir pg-replica)"
}

replica_running() {
  local bin data="$RUN/pg-replica"
  bin=$(pg_bindir) || return 1
  [ -e "$data/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

prepare_primary_for_replication() {
  # The server on PG_PORT must be this checkout's cluster: a port naming another one (a stale
  # OPSLOOP_PG_PORT) would have us add a role to, and copy, someone else's.
  local ours theirs
  ours=$(cd "$(pg_datadir)" && pwd -P)
  theirs=$(psql_primary -c "SHOW data_directory")
  if [ "$ours" != "$(cd "$theirs" 2>/dev/null && pwd -P)" ]; then
    log "the server on 127.0.0.1:$PG_PORT serves $theirs, not this checkout's $ours: check OPSLOOP_PG_PORT"
    exit 1
  fi
  # A role that may only replicate, and a pg_hba line for it from this machine. The cluster
  # trusts local connections (initdb --auth=trust); a server on a network would ask for a
  # password or a certificate here (docs/deploy.md).
  psql_primary -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$REPLICATION_USER') THEN
        CREATE ROLE $REPLICATION_USER WITH REPLICATION LOGIN;
      END IF; END \$\$"
  local data hba_line="host replication $REPLICATION_USER 127.0.0.1/32 trust"
  data=$(pg_datadir)
  if ! grep -qxF "$hba_line" "$data/pg_hba.conf"; then
    # First, so that no broader line decides for this role.
    { echo "$hba_line"; cat "$data/pg_hba.conf"; } >"$data/pg_hba.conf.new"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$data/pg_hba.conf.new"; fi
    chmod 600 "$data/pg_hba.conf.new"
    mv "$data/pg_hba.conf.new" "$data/pg_hba.conf"
  fi
  psql_primary -c "SELECT pg_reload_conf()" >/dev/null
  # wal_level = replica is PostgreSQL's default; a cluster set to `minimal` cannot stream.
  if [ "$(psql_primary -c 'SHOW wal_level')" = minimal ]; then
    log "wal_level is minimal: set wal_level = replica and restart the primary"
    exit 1
  fi
}

replica_matches_primary() {
  # A copy of an earlier cluster (removed and initialised again) can never stream from this one:
  # its system identifier differs.
  local data="$1" ours theirs
  ours=$(psql_primary -c "SELECT system_identifier FROM pg_control_system()")
  # LC_ALL=C: pg_controldata translates its labels.
  theirs=$(LC_ALL=C as_owner "$(pg_bindir)/pg_controldata" -D "$data" 2>/dev/null |
    sed -n 's/^Database system identifier: *//p')
  [ -n "$ours" ] && [ "$ours" = "$theirs" ]
}

drop_slot() {
  # Only a slot no server streams through: an active one belongs to a running replica.
  psql_primary -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
    WHERE slot_name = '$REPLICATION_SLOT' AND NOT active" >/dev/null
}

ensure_slot() {
  # A copy whose slot was dropped at stop-replica streams again through a new one; it still
  # finds its WAL unless the primary recycled it meanwhile (then start_replica copies again).
  psql_primary -c "SELECT pg_create_physical_replication_slot('$REPLICATION_SLOT', true)
    WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '$REPLICATION_SLOT')" >/dev/null
}

make_replica() {
  local bin="$1" data="$2"
  # Never delete the files of a server that still runs.
  if replica_running; then
    log "the replica in $data still runs: not copying over it (stop it with: pg_ctl -D $data stop)"
    exit 1
  fi
  log "copying the primary into $data (pg_basebackup)"
  find "$data" -mindepth 1 -delete
  drop_slot
  # -R writes standby.signal and primary_conninfo (with primary_slot_name); -C -S creates the
  # slot; -X stream copies the WAL written meanwhile.
  as_owner "$bin/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U "$REPLICATION_USER" -D "$data" \
    -R -X stream -c fast -C -S "$REPLICATION_SLOT"
  rm -f "$data/server.log"
}

port_free() {
  # Whether a server could listen on 127.0.0.1:$1 now, bound the way PostgreSQL binds.
  if ! command -v python3 >/dev/null; then
    log "python3 is needed to find a free port; install it with your system's package manager"
    exit 1
  fi
  [ "$1" -le 65535 ] || return 1
  python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
' "$1"
}

choose_port() {
  # Sets the variable named $1 (PG_PORT or REPLICA_PORT) to a port a server can listen on.
  # The default ports lie in the kernel's ephemeral range, so any process's outgoing connection
  # (a test run's own to the primary) may hold one for a while. A port named in $2 is kept or
  # refused; a default one moves to the next free port, which .run/ports and .run/env then name.
  local var=$1 named=$2 what=$3 port
  local wanted=${!var}
  port_free "$wanted" && return 0
  if [ -n "${!named:-}" ]; then
    log "port $wanted is in use by another process (see: ss -tanp | grep :$wanted): choose another with $named"
    exit 1
  fi
  for port in $(seq $((wanted + 1)) $((wanted + 100))); do
    if [ "$port" != "$PG_PORT" ] && [ "$port" != "$REPLICA_PORT" ] && [ "$port" != "$REDIS_PORT" ] &&
      port_free "$port"; then
      log "port $wanted is in use by another process: $what listens on $port instead"
      printf -v "$var" '%s' "$port"
      return 0
    fi
  done
  log "no free port from $wanted to $((wanted + 100)): choose one with $named"
  exit 1
}

launch_replica() {
  local bin=$1 data=$2
  # Read after opsloop.conf (the primary's, copied with it), so that this port wins.
  # hot_standby_feedback: the primary's vacuum keeps the rows a long dashboard query on the
  # replica still reads, instead of the replica cancelling that query.
  cat >"$data/opsloop-replica.conf" <<CONF
port = $REPLICA_PORT
hot_standby = on
hot_standby_feedback = on
CONF
  if [ "$(id -u)" = 0 ]; then chown postgres: "$data/opsloop-replica.conf" "$(replica_log)"; fi
  as_owner "$bin/pg_ctl" -D "$data" -l "$(replica_log)" -w -t 60 -o "-p $REPLICA_PORT" start >/dev/null
}

start_replica() {
  local bin data i try position logged
  bin=$(pg_bindir)
  prepare_primary_for_replication
  data=$(pg_datadir pg-replica)
  mkdir -p "$data"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$data"; fi
  chmod 700 "$data"
  # A port another server listens on, or another process's connection holds: see choose_port.
  if ! replica_running; then choose_port REPLICA_PORT OPSLOOP_PG_REPLICA_PORT "the replica"; fi
  for try in 1 2; do
    position=$(psql_primary -c "SELECT pg_current_wal_lsn()")
    if ! replica_running; then
      if [ ! -f "$data/standby.signal" ] || ! replica_matches_primary "$data"; then
        make_replica "$bin" "$data"
      fi
      ensure_slot
      grep -q "^include_if_exists = 'opsloop-replica.conf'" "$data/postgresql.conf" ||
        echo "include_if_exists = 'opsloop-replica.conf'" >>"$data/postgresql.conf"
      touch "$(replica_log)"
      logged=$(wc -l <"$(replica_log)")
      if ! launch_replica "$bin" "$data"; then
        # Another process took the port between the check and the start: once more on another.
        # (grep reads to the end, so that tail never dies of a closed pipe under pipefail)
        tail -n +"$((logged + 1))" "$(replica_log)" | grep "Address already in use" >/dev/null || exit 1
        [ -z "${OPSLOOP_PG_REPLICA_PORT:-}" ] || exit 1
        choose_port REPLICA_PORT OPSLOOP_PG_REPLICA_PORT "the replica"
        launch_replica "$bin" "$data"
      fi
    fi
    # Streaming within a minute, or the primary no longer keeps the WAL this copy needs: copy again.
    for i in $(seq 1 300); do
      # Streaming, and caught up with what the primary had written when we started: a copy kept
      # from an earlier run replays what it missed first, and a reader must find it there.
      if [ "$(psql_replica -c "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'" 2>/dev/null)" = 1 ] &&
        [ "$(psql_replica -c "SELECT pg_last_wal_replay_lsn() >= '$position'::pg_lsn" 2>/dev/null)" = t ]; then
        log "PostgreSQL replica streaming on 127.0.0.1:$REPLICA_PORT"
        return 0
      fi
      sleep 0.2
    done
    [ "$try" = 2 ] && break
    log "the replica does not stream (see $(replica_log)): copying the primary again"
    as_owner "$bin/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    if replica_running; then
      log "the replica in $data did not stop: leaving its files be"
      exit 1
    fi
    rm -f "$data/standby.signal"
  done
  log "the replica did not start streaming; see $(replica_log)"
  exit 1
}

stop_replica() {
  local bin data="$RUN/pg-replica"
  bin=$(pg_bindir) || return 0
  if replica_running; then
    as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    log "PostgreSQL replica stopped"
  fi
  # A stopped replica's slot would have the primary keep WAL without bound.
  if ! replica_running && "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then drop_slot; fi
}

redis_running() {
  [ -f "$RUN/redis/redis.pid" ] && kill -0 "$(cat "$RUN/redis/redis.pid")" 2>/dev/null
}

start_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$RUN/redis"
  if redis_running; then
    log "Redis already running on 127.0.0.1:$REDIS_PORT"
  else
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" \
      --pidfile "$RUN/redis/redis.pid" --dir "$RUN/redis" --logfile "$RUN/redis/redis.log" \
      --save '' --appendonly no --databases 32 >/dev/null
    local i
    for i in $(seq 1 50); do
      redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    log "Redis started on 127.0.0.1:$REDIS_PORT"
  fi
}

stop_redis() {
  if redis_running; then
    kill "$(cat "$RUN/redis/redis.pid")"
    local i
    for i in $(seq 1 50); do redis_running || break; sleep 0.1; done
    log "Redis stopped"
  fi
  rm -f "$RUN/redis/redis.pid"
}

write_env() {
  printf 'SAVED_PG_PORT=%s\nSAVED_REDIS_PORT=%s\nSAVED_PG_REPLICA_PORT=%s\n' \
    "$PG_PORT" "$REDIS_PORT" "$REPLICA_PORT" >"$RUN/ports"
  cat >"$RUN/env" <<ENV
DATABASE_URL=postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
ENV
  # Only while the replica runs: settings naming a stopped one would have every process try it
  # before falling back to the primary.
  if replica_running; then
    echo "OPSLOOP_REPLICA_DATABASE_URL=postgres://$PG_USER@127.0.0.1:$REPLICA_PORT/$PG_DB" >>"$RUN/env"
  fi
}

mkdir -p "$RUN"
case "${1:-}" in
  start) start_pg; start_redis; write_env ;;
  stop) stop_redis; stop_replica; stop_pg; [ ! -f "$RUN/env" ] || write_env ;;
  start-replica) start_pg; start_replica; write_env ;;
  stop-replica) stop_replica; write_env ;;
  status)
    bin=$(pg_bindir) && as_owner "$bin/pg_ctl" -D "$RUN/pg" status || true
    if replica_running; then echo "replica running on 127.0.0.1:$REPLICA_PORT"; else echo "replica not running"; fi
    redis_running && echo "redis running (pid $(cat "$RUN/redis/redis.pid"))" || echo "redis not running"
    ;;
  *) echo "usage: $0 start|stop|status|start-replica|stop-replica" >&2; exit 2 ;;
esac
