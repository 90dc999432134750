#!/usr/bin/env bash
# The local stack on loopback: ClickHouse 18.16 (Debian package), the Kafka-API broker tansu
# 0.6.0 and the S3 store Garage 2.5.0 (both built from crates.io).
#
#   scripts/stack.sh up [SERVICE...]     install what is missing, start, wait until ready
#   scripts/stack.sh down [SERVICE...]   stop what this script started (pid files)
#   scripts/stack.sh status              one line per service
#   scripts/stack.sh env                 endpoints and credentials as shell exports
#   scripts/stack.sh install             only install/build the tools
#
# SERVICE is clickhouse, kafka or s3 (default: all three).
# Settings (env): TOPK_STACK_DIR (data, logs, pid files; default <repo>/.stack),
# TOPK_CACHE_DIR (built tools; default ~/.cache/topk), TOPK_KAFKA_STORAGE (memory|sqlite;
# default memory, sqlite survives broker restarts), TOPK_STACK_*_PORT to move ports.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${TOPK_STACK_DIR:-$ROOT/.stack}
CACHE_DIR=${TOPK_CACHE_DIR:-$HOME/.cache/topk}
TOOLS_DIR=$CACHE_DIR/tools
KAFKA_STORAGE=${TOPK_KAFKA_STORAGE:-memory}

CH_HTTP_PORT=${TOPK_STACK_CH_HTTP_PORT:-18123}
CH_TCP_PORT=${TOPK_STACK_CH_TCP_PORT:-19000}
CH_INTERSERVER_PORT=${TOPK_STACK_CH_INTERSERVER_PORT:-19009}
KAFKA_PORT=${TOPK_STACK_KAFKA_PORT:-19092}
S3_PORT=${TOPK_STACK_S3_PORT:-13900}
GARAGE_RPC_PORT=${TOPK_STACK_GARAGE_RPC_PORT:-13901}
GARAGE_ADMIN_PORT=${TOPK_STACK_GARAGE_ADMIN_PORT:-13903}
S3_BUCKET=${TOPK_STACK_S3_BUCKET:-topk-archive}

TANSU_VERSION=0.6.0
GARAGE_VERSION=2.5.0
TANSU_BIN=$TOOLS_DIR/tansu-$TANSU_VERSION/bin/tansu
GARAGE_BIN=$TOOLS_DIR/garage-$GARAGE_VERSION/bin/garage

SERVICES=(clickhouse kafka s3)

say() { echo "stack: $*" >&2; }
die() { echo "stack: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- install

install_clickhouse() {
  command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null && return
  say "installing clickhouse-server and clickhouse-client from Debian (apt-get)"
  local log=$CACHE_DIR/logs/apt-clickhouse.log
  mkdir -p "$(dirname "$log")"
  if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y clickhouse-server clickhouse-client; } >"$log" 2>&1; then
    die "installing ClickHouse failed; read $log"
  fi
}

# cargo_install NAME VERSION FEATURES BIN: builds once into the cache, under a lock so two
# concurrent `up`s do not build twice.
cargo_install() {
  local name=$1 version=$2 features=$3 bin=$4
  [ -x "$bin" ] && return
  mkdir -p "$CACHE_DIR/logs"
  local log=$CACHE_DIR/logs/build-$name-$version.log
  exec 9>"$CACHE_DIR/build-$name.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    say "building $name $version from crates.io (first time only, ~15 min on 2 cores); log: $log"
    local args=(install "$name" --version "$version" --locked --root "$TOOLS_DIR/$name-$version")
    [ -n "$features" ] && args+=(--features "$features")
    if ! cargo "${args[@]}" >"$log" 2>&1; then
      flock -u 9
      die "building $name failed; read $log"
    fi
    say "built $name $version"
  fi
  flock -u 9
}

install_tools() {
  command -v cargo >/dev/null || die "cargo is missing: install the Rust toolchain (rustup) first"
  install_clickhouse
  cargo_install tansu "$TANSU_VERSION" dynostore,libsql "$TANSU_BIN"
  cargo_install garage "$GARAGE_VERSION" "" "$GARAGE_BIN"
}

# ---------------------------------------------------------------- processes

pid_file() { echo "$STACK_DIR/$1/$1.pid"; }
log_file() { echo "$STACK_DIR/$1/$1.log"; }

running_pid() {
  local file
  file=$(pid_file "$1")
  [ -f "$file" ] || return 1
  local pid
  pid=$(cat "$file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# start_process SERVICE WORKDIR COMMAND...: runs in its own session, output to its log.
start_process() {
  local service=$1 workdir=$2
  shift 2
  mkdir -p "$STACK_DIR/$service"
  (cd "$workdir" && exec setsid "$@" >>"$(log_file "$service")" 2>&1 </dev/null) &
  echo $! >"$(pid_file "$service")"
}

stop_process() {
  local service=$1 pid
  if ! pid=$(running_pid "$service"); then
    rm -f "$(pid_file "$service")"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$service (pid $pid) did not stop in 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$(pid_file "$service")"
  say "$service stopped"
}

# wait_for SERVICE SECONDS CHECK...: polls CHECK until it succeeds or the process dies.
wait_for() {
  local service=$1 seconds=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ! running_pid "$service" >/dev/null; then
      die "$service exited during start-up; read $(log_file "$service")"
    fi
    if [ $SECONDS -ge $deadline ]; then
      die "$service did not answer within ${seconds}s; read $(log_file "$service")"
    fi
    sleep 0.3
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- clickhouse

clickhouse_config() {
  local dir=$STACK_DIR/clickhouse
  mkdir -p "$dir/data" "$dir/logs" "$dir/config"
  # A copy of the package's config with our own paths and ports, IPv4 loopback only.
  sed -e "s#/var/lib/clickhouse/#$dir/data/#g" \
      -e "s#/var/log/clickhouse-server/#$dir/logs/#g" \
      -e "s#<http_port>8123</http_port>#<http_port>$CH_HTTP_PORT</http_port>#" \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$CH_TCP_PORT</tcp_port>#" \
      -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$CH_INTERSERVER_PORT</interserver_http_port>#" \
      -e "s#<listen_host>::1</listen_host>##" \
      -e "s#<timezone>.*</timezone>##" \
      /etc/clickhouse-server/config.xml >"$dir/config/config.xml"
  cp /etc/clickhouse-server/users.xml "$dir/config/users.xml"
}

clickhouse_ready() {
  [ "$(curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%201" 2>/dev/null)" = "1" ]
}

up_clickhouse() {
  if running_pid clickhouse >/dev/null; then
    clickhouse_ready && return
    wait_for clickhouse 120 clickhouse_ready
    return
  fi
  port_open "$CH_HTTP_PORT" && die "port $CH_HTTP_PORT is taken by another process (set TOPK_STACK_CH_HTTP_PORT)"
  clickhouse_config
  say "starting clickhouse on 127.0.0.1:$CH_HTTP_PORT"
  start_process clickhouse "$STACK_DIR/clickhouse" \
    clickhouse-server --config-file="$STACK_DIR/clickhouse/config/config.xml"
  wait_for clickhouse 120 clickhouse_ready
}

# ---------------------------------------------------------------- kafka (tansu)

kafka_ready() { port_open "$KAFKA_PORT"; }

up_kafka() {
  if running_pid kafka >/dev/null; then
    wait_for kafka 60 kafka_ready
    return
  fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set TOPK_STACK_KAFKA_PORT)"
  local dir=$STACK_DIR/kafka storage
  mkdir -p "$dir"
  case "$KAFKA_STORAGE" in
    memory) storage="memory://tansu/" ;;
    # tansu takes the sqlite path relative to its working directory.
    sqlite) storage="sqlite://tansu.db" ;;
    *) die "TOPK_KAFKA_STORAGE must be memory or sqlite, not $KAFKA_STORAGE" ;;
  esac
  say "starting tansu on 127.0.0.1:$KAFKA_PORT ($KAFKA_STORAGE storage)"
  start_process kafka "$dir" "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "$storage"
  echo "$KAFKA_STORAGE" >"$dir/storage"
  wait_for kafka 60 kafka_ready
}

# ---------------------------------------------------------------- s3 (garage)

garage() { "$GARAGE_BIN" -c "$STACK_DIR/s3/garage.toml" "$@"; }

garage_config() {
  local dir=$STACK_DIR/s3
  mkdir -p "$dir/meta" "$dir/data"
  [ -f "$dir/rpc_secret" ] || od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$dir/rpc_secret"
  [ -f "$dir/admin_token" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$dir/admin_token"
  cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$(cat "$dir/rpc_secret")"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$GARAGE_ADMIN_PORT"
admin_token = "$(cat "$dir/admin_token")"
EOF
}

garage_ready() { port_open "$S3_PORT" && garage status; }

# First start only: give the node a role, create the bucket and an access key.
garage_bootstrap() {
  local dir=$STACK_DIR/s3
  [ -f "$dir/credentials.env" ] && return
  local node
  node=$(garage node id -q 2>/dev/null | cut -d@ -f1)
  [ -n "$node" ] || die "garage did not report its node id; read $(log_file s3)"
  # Tolerate a re-run after a half-done bootstrap: the layout may already be applied.
  garage layout assign -z dc1 -c 1G "$node" >/dev/null 2>&1 || true
  garage layout apply --version 1 >/dev/null 2>&1 || true
  garage bucket create "$S3_BUCKET" >/dev/null 2>&1 || true
  local key_output key_id secret
  key_output=$(garage key create topk-stack)
  key_id=$(echo "$key_output" | awk -F': *' '/Key ID/ {print $2; exit}')
  secret=$(echo "$key_output" | awk -F': *' '/Secret key/ {print $2; exit}')
  [ -n "$key_id" ] && [ -n "$secret" ] || die "could not read the key garage created: $key_output"
  garage bucket allow --read --write "$S3_BUCKET" --key topk-stack >/dev/null
  printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$key_id" "$secret" >"$dir/credentials.env"
  say "garage: bucket $S3_BUCKET and key $key_id created"
}

up_s3() {
  if ! running_pid s3 >/dev/null; then
    port_open "$S3_PORT" && die "port $S3_PORT is taken by another process (set TOPK_STACK_S3_PORT)"
    garage_config
    say "starting garage on 127.0.0.1:$S3_PORT"
    start_process s3 "$STACK_DIR/s3" "$GARAGE_BIN" -c "$STACK_DIR/s3/garage.toml" server
  fi
  wait_for s3 180 garage_ready
  garage_bootstrap
  wait_for s3 180 s3_bucket_ready
}

# The bucket answers once the layout is live (a few seconds after the first apply).
s3_bucket_ready() { garage bucket info "$S3_BUCKET"; }

# ---------------------------------------------------------------- commands

print_env() {
  local creds=$STACK_DIR/s3/credentials.env
  echo "export TOPK_CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP_PORT"
  echo "export TOPK_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
  echo "export TOPK_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
  echo "export TOPK_S3_REGION=garage"
  echo "export TOPK_S3_BUCKET=$S3_BUCKET"
  echo "export TOPK_S3_FORCE_PATH_STYLE=true"
  if [ -f "$creds" ]; then
    sed 's/^/export /' "$creds"
  fi
}

selected_services() {
  if [ $# -eq 0 ]; then
    echo "${SERVICES[@]}"
    return
  fi
  for service in "$@"; do
    case "$service" in
      clickhouse|kafka|s3) echo "$service" ;;
      *) die "unknown service $service (clickhouse, kafka, s3)" ;;
    esac
  done
}

install_for() {
  case "$1" in
    clickhouse) install_clickhouse ;;
    kafka) cargo_install tansu "$TANSU_VERSION" dynostore,libsql "$TANSU_BIN" ;;
    s3) cargo_install garage "$GARAGE_VERSION" "" "$GARAGE_BIN" ;;
  esac
}

cmd_up() {
  command -v cargo >/dev/null || die "cargo is missing: install the Rust toolchain (rustup) first"
  mkdir -p "$STACK_DIR"
  local service
  for service in $(selected_services "$@"); do
    install_for "$service"
  done
  for service in $(selected_services "$@"); do
    "up_$service"
  done
  print_env >"$STACK_DIR/env"
  say "ready; endpoints: $(tr '\n' ' ' <"$STACK_DIR/env" | sed 's/export //g; s/AWS_SECRET_ACCESS_KEY=[^ ]*/AWS_SECRET_ACCESS_KEY=***/')"
}

cmd_down() {
  local services
  services=$(selected_services "$@")
  # Reverse order: s3, kafka, clickhouse.
  for service in $(echo "$services" | tr ' ' '\n' | tac); do
    stop_process "$service"
  done
}

cmd_status() {
  local pid
  for service in "${SERVICES[@]}"; do
    if pid=$(running_pid "$service"); then
      echo "$service: running (pid $pid, log $(log_file "$service"))"
    else
      echo "$service: stopped"
    fi
  done
}

main() {
  local command=${1:-}
  [ $# -gt 0 ] && shift
  case "$command" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    env) print_env ;;
    install) install_tools ;;
    -h|--help|help|"") sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command $command (up, down, status, env, install)" ;;
  esac
}

main "$@"
