#!/usr/bin/env bash
# The local stack on loopback: ClickHouse 18.16 (Debian package), the Kafka-API broker tansu
# 0.6.0 and the S3 store Garage 2.5.0 (both built from crates.io); on request also a ClickHouse
# cluster (ZooKeeper 3.8 from Debian and four ClickHouse 18.16 servers).
#
#   scripts/stack.sh up [SERVICE...]       install what is missing, start, wait until ready
#   scripts/stack.sh down [SERVICE...]     stop what this script started (pid files)
#   scripts/stack.sh status [SERVICE...]   one line per process
#   scripts/stack.sh env [SERVICE...]      endpoints and credentials as shell exports
#   scripts/stack.sh install [SERVICE...]  only install/build the tools
#
# SERVICE is clickhouse, kafka, s3 or cluster; the default is clickhouse, kafka and s3 (the
# cluster runs only when named; `status` without SERVICE lists it while any of it runs).
# `zookeeper` names the cluster's ZooKeeper alone (fault tests stop and start it under running
# servers; `up cluster` would restart the servers after it).
# cluster: cluster `topk` of 2 shards x 2 replicas (nodes ch1..ch4, HTTP on 18201..18204,
# native on 19201..19204, macros shard=01|02, replica=ch1..ch4) and ZooKeeper on 12181; its
# exports (`env cluster`, also written to <stack dir>/cluster/env) are TOPK_CLUSTER_*.
# Settings (env): TOPK_STACK_DIR (data, logs, pid files; default <repo>/.stack),
# TOPK_CACHE_DIR (built tools; default ~/.cache/topk), TOPK_KAFKA_STORAGE (memory|sqlite;
# default memory, sqlite survives broker restarts), TOPK_STACK_*_PORT to move ports;
# cluster: TOPK_STACK_CLUSTER_ZK_PORT, TOPK_STACK_CLUSTER_{HTTP,TCP,INTERSERVER}_PORT_BASE
# (node N listens on base + N; defaults 18200, 19200, 19300).
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
CLUSTER_ZK_PORT=${TOPK_STACK_CLUSTER_ZK_PORT:-12181}
CLUSTER_HTTP_PORT_BASE=${TOPK_STACK_CLUSTER_HTTP_PORT_BASE:-18200}
CLUSTER_TCP_PORT_BASE=${TOPK_STACK_CLUSTER_TCP_PORT_BASE:-19200}
CLUSTER_INTERSERVER_PORT_BASE=${TOPK_STACK_CLUSTER_INTERSERVER_PORT_BASE:-19300}

TANSU_VERSION=0.6.0
GARAGE_VERSION=2.5.0
TANSU_BIN=$TOOLS_DIR/tansu-$TANSU_VERSION/bin/tansu
GARAGE_BIN=$TOOLS_DIR/garage-$GARAGE_VERSION/bin/garage

SERVICES=(clickhouse kafka s3)
CLUSTER_NAME=topk
CLUSTER_NODES=(1 2 3 4)
ZOOKEEPER_CLASSPATH=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar
# The package's jar has no logging backend on its class path (slf4j-api only); these two come
# with libzookeeper-java and send the log to the console, so to the process log.
ZOOKEEPER_CLASSPATH=$ZOOKEEPER_CLASSPATH:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar

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

install_zookeeper() {
  [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null && return
  say "installing zookeeper from Debian (apt-get)"
  local log=$CACHE_DIR/logs/apt-zookeeper.log
  mkdir -p "$(dirname "$log")"
  if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y zookeeper; } >"$log" 2>&1; then
    die "installing ZooKeeper failed; read $log"
  fi
}

# cargo_install NAME VERSION FEATURES BIN: builds once into the cache, under a lock so two
# concurrent `up`s do not build twice.
cargo_install() {
  local name=$1 version=$2 features=$3 bin=$4
  [ -x "$bin" ] && return
  command -v cargo >/dev/null || die "cargo is missing: install the Rust toolchain (rustup) first"
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

# A process is named by its folder under STACK_DIR: clickhouse, kafka, s3, cluster/ch1, ...
pid_file() { echo "$STACK_DIR/$1/${1##*/}.pid"; }
log_file() { echo "$STACK_DIR/$1/${1##*/}.log"; }

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

# stop_process SERVICE [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 10).
stop_process() {
  local service=$1 seconds=${2:-10} pid
  if ! pid=$(running_pid "$service"); then
    rm -f "$(pid_file "$service")"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((seconds * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$service (pid $pid) did not stop in $seconds s; killing it"
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

# clickhouse_config_xml DIR HTTP_PORT TCP_PORT INTERSERVER_PORT: prints a copy of the package's
# config with data and logs under DIR and our own ports, IPv4 loopback only.
clickhouse_config_xml() {
  local dir=$1 http_port=$2 tcp_port=$3 interserver_port=$4
  sed -e "s#/var/lib/clickhouse/#$dir/data/#g" \
      -e "s#/var/log/clickhouse-server/#$dir/logs/#g" \
      -e "s#<http_port>8123</http_port>#<http_port>$http_port</http_port>#" \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$tcp_port</tcp_port>#" \
      -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$interserver_port</interserver_http_port>#" \
      -e "s#<listen_host>::1</listen_host>##" \
      -e "s#<timezone>.*</timezone>##" \
      /etc/clickhouse-server/config.xml
}

clickhouse_config() {
  local dir=$STACK_DIR/clickhouse
  mkdir -p "$dir/data" "$dir/logs" "$dir/config"
  clickhouse_config_xml "$dir" "$CH_HTTP_PORT" "$CH_TCP_PORT" "$CH_INTERSERVER_PORT" >"$dir/config/config.xml"
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

# ---------------------------------------------------------------- cluster (zookeeper + 4 clickhouse)

cluster_http_port() { echo $((CLUSTER_HTTP_PORT_BASE + $1)); }
cluster_tcp_port() { echo $((CLUSTER_TCP_PORT_BASE + $1)); }
cluster_interserver_port() { echo $((CLUSTER_INTERSERVER_PORT_BASE + $1)); }
# Nodes 1 and 2 hold shard 01, nodes 3 and 4 shard 02.
cluster_shard() { printf '%02d' $((($1 + 1) / 2)); }

cluster_processes() {
  local node
  echo cluster/zookeeper
  for node in "${CLUSTER_NODES[@]}"; do echo "cluster/ch$node"; done
}

# port_free PORT SETTING: dies when another process listens on PORT.
port_free() {
  if port_open "$1"; then
    die "port $1 is taken by another process (set $2)"
  fi
}

# retry SECONDS CHECK...: polls CHECK until it succeeds (0) or SECONDS pass (1).
retry() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.3
  done
}

zookeeper_config() {
  local dir=$STACK_DIR/cluster/zookeeper
  mkdir -p "$dir/data"
  # srvr answers "Mode: standalone" only once the server serves requests (ruok answers earlier).
  cat >"$dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$dir/data
clientPortAddress=127.0.0.1
clientPort=$CLUSTER_ZK_PORT
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,cons,dump
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
CFG
}

zookeeper_serving() {
  local reply
  reply=$({ exec 3<>"/dev/tcp/127.0.0.1/$CLUSTER_ZK_PORT" && printf srvr >&3 && timeout 2 cat <&3; } 2>/dev/null) || return 1
  case "$reply" in
    *"Mode: "*) return 0 ;;
    *) return 1 ;;
  esac
}

up_zookeeper() {
  if ! running_pid cluster/zookeeper >/dev/null; then
    zookeeper_config
    say "starting zookeeper on 127.0.0.1:$CLUSTER_ZK_PORT"
    # zkServer.sh of the Debian package fails (empty pid dir): run the main class directly.
    start_process cluster/zookeeper "$STACK_DIR/cluster/zookeeper" \
      java -Xmx256m -Dzookeeper.root.logger=INFO,CONSOLE -cp "$ZOOKEEPER_CLASSPATH" \
      org.apache.zookeeper.server.quorum.QuorumPeerMain "$STACK_DIR/cluster/zookeeper/zoo.cfg"
  fi
  wait_for cluster/zookeeper 60 zookeeper_serving
}

# The substitutions the package's config.xml refers to with incl=: the cluster, ZooKeeper and
# this node's macros.
cluster_include_xml() {
  local node=$1 shard first replica
  echo "<yandex>"
  echo "    <clickhouse_remote_servers>"
  echo "        <$CLUSTER_NAME>"
  for first in 1 3; do
    echo "            <shard>"
    echo "                <internal_replication>true</internal_replication>"
    for replica in "$first" $((first + 1)); do
      echo "                <replica><host>127.0.0.1</host><port>$(cluster_tcp_port "$replica")</port></replica>"
    done
    echo "            </shard>"
  done
  echo "        </$CLUSTER_NAME>"
  echo "    </clickhouse_remote_servers>"
  echo "    <zookeeper-servers>"
  echo "        <node><host>127.0.0.1</host><port>$CLUSTER_ZK_PORT</port></node>"
  echo "    </zookeeper-servers>"
  shard=$(cluster_shard "$node")
  echo "    <macros><shard>$shard</shard><replica>ch$node</replica></macros>"
  echo "</yandex>"
}

cluster_node_config() {
  local node=$1 dir=$STACK_DIR/cluster/ch$1
  mkdir -p "$dir/data" "$dir/logs" "$dir/config"
  cluster_include_xml "$node" >"$dir/config/cluster.xml"
  # Replicas fetch parts from the address a node advertises (default: its host name, which need
  # not resolve to loopback), so advertise 127.0.0.1.
  clickhouse_config_xml "$dir" "$(cluster_http_port "$node")" "$(cluster_tcp_port "$node")" \
      "$(cluster_interserver_port "$node")" |
    sed -e "s#^<yandex>\$#<yandex>\\n    <include_from>$dir/config/cluster.xml</include_from>\\n    <listen_host>127.0.0.1</listen_host>\\n    <interserver_http_host>127.0.0.1</interserver_http_host>#" \
      >"$dir/config/config.xml"
  cp /etc/clickhouse-server/users.xml "$dir/config/users.xml"
}

# cluster_query NODE SQL: runs SQL over HTTP on NODE, prints the answer.
cluster_query() {
  curl -fsS "http://127.0.0.1:$(cluster_http_port "$1")/" --data-binary "$2"
}

cluster_node_ready() { [ "$(cluster_query "$1" 'SELECT 1' 2>/dev/null)" = "1" ]; }

cluster_node_has_zookeeper() {
  cluster_query "$1" "SELECT count() FROM system.zookeeper WHERE path = '/'" | grep -qx '[0-9][0-9]*'
}

# zookeeper_4lw COMMAND: ZooKeeper's answer to a four-letter command (whitelisted in zoo.cfg).
zookeeper_4lw() {
  { exec 3<>"/dev/tcp/127.0.0.1/$CLUSTER_ZK_PORT" && printf '%s' "$1" >&3 && timeout 2 cat <&3; } 2>/dev/null
}

# No ZooKeeper session outlives its client: every session ZooKeeper tracks (`dump`) has a
# connection (`cons`). A killed server's session lives on until it expires (up to 40 s), and
# ZooKeeper keeps sessions across its own restarts; while it lives, the restarted server's
# replicas cannot start ("Replica … appears to be already active").
zookeeper_no_stale_sessions() {
  local tracked live
  tracked=$(zookeeper_4lw dump) || return 1
  live=$(zookeeper_4lw cons) || return 1
  [ -z "$(comm -23 <(grep -oE '^[[:space:]]+0x[0-9a-f]+$' <<<"$tracked" | grep -oE '0x[0-9a-f]+' | sort -u) \
                   <(grep -oE 'sid=0x[0-9a-f]+' <<<"$live" | cut -d= -f2 | sort -u))" ]
}

# Every replicated table of the node sees all of its replicas active. A restarted server
# starts its replicas only once ZooKeeper dropped its old session, retrying every ~10 s; until
# then `ON CLUSTER` statements that wait for them hang in the DDL queue.
cluster_node_replicas_active() {
  [ "$(cluster_query "$1" "SELECT count() FROM system.replicas WHERE active_replicas < total_replicas")" = 0 ]
}

# One `ON CLUSTER` statement answered by every node: each server's DDL worker runs.
cluster_ddl_answers() {
  curl -fsS "http://127.0.0.1:$(cluster_http_port 1)/?distributed_ddl_task_timeout=60" \
    --data-binary "CREATE DATABASE IF NOT EXISTS topk_stack_ready ON CLUSTER $CLUSTER_NAME" >/dev/null
}

# Every port a process still to be started needs, checked before anything starts.
cluster_ports_free() {
  local node
  if ! running_pid cluster/zookeeper >/dev/null; then
    port_free "$CLUSTER_ZK_PORT" TOPK_STACK_CLUSTER_ZK_PORT
  fi
  for node in "${CLUSTER_NODES[@]}"; do
    running_pid "cluster/ch$node" >/dev/null && continue
    port_free "$(cluster_http_port "$node")" TOPK_STACK_CLUSTER_HTTP_PORT_BASE
    port_free "$(cluster_tcp_port "$node")" TOPK_STACK_CLUSTER_TCP_PORT_BASE
    port_free "$(cluster_interserver_port "$node")" TOPK_STACK_CLUSTER_INTERSERVER_PORT_BASE
  done
}

up_cluster() {
  # A ClickHouse server started before ZooKeeper answers never gets a ZooKeeper client (no
  # system.zookeeper, no ON CLUSTER) until it is restarted, and one that outlived its ZooKeeper
  # fails its next ON CLUSTER statement (expired session): ZooKeeper first, then the servers.
  if ! running_pid cluster/zookeeper >/dev/null && cluster_nodes_running; then
    say "zookeeper is not running: restarting the cluster's clickhouse servers after it"
    stop_cluster_nodes
  fi
  cluster_ports_free
  up_zookeeper
  local node
  for node in "${CLUSTER_NODES[@]}"; do
    running_pid "cluster/ch$node" >/dev/null && continue
    cluster_node_config "$node"
    say "starting clickhouse cluster node ch$node (shard $(cluster_shard "$node")) on 127.0.0.1:$(cluster_http_port "$node")"
    start_process "cluster/ch$node" "$STACK_DIR/cluster/ch$node" \
      clickhouse-server --config-file="$STACK_DIR/cluster/ch$node/config/config.xml"
  done
  for node in "${CLUSTER_NODES[@]}"; do
    wait_for "cluster/ch$node" 120 cluster_node_ready "$node"
  done
  local replicas
  for node in "${CLUSTER_NODES[@]}"; do
    if ! retry 30 cluster_node_has_zookeeper "$node"; then
      die "cluster node ch$node has no ZooKeeper session (a server started before ZooKeeper answered never gets one): run scripts/stack.sh down cluster, then up cluster; logs in $STACK_DIR/cluster/ch$node/logs"
    fi
    replicas=$(cluster_query "$node" "SELECT count() FROM system.clusters WHERE cluster = '$CLUSTER_NAME'")
    [ "$replicas" = "${#CLUSTER_NODES[@]}" ] ||
      die "cluster node ch$node sees $replicas replicas in cluster $CLUSTER_NAME, not ${#CLUSTER_NODES[@]}; read $STACK_DIR/cluster/ch$node/config/cluster.xml"
  done
  if ! zookeeper_no_stale_sessions; then
    say "waiting for ZooKeeper to expire the sessions of killed clients (their replicas cannot start before)"
    retry 90 zookeeper_no_stale_sessions ||
      die "ZooKeeper still tracks sessions without a connection after 90 s (printf dump | nc 127.0.0.1 $CLUSTER_ZK_PORT)"
  fi
  for node in "${CLUSTER_NODES[@]}"; do
    if ! cluster_node_replicas_active "$node"; then
      say "cluster node ch$node: waiting for every replica of its tables to be active"
      retry 120 cluster_node_replicas_active "$node" ||
        say "warning: cluster node ch$node still has tables with inactive replicas after 120 s (SELECT database, table FROM system.replicas WHERE active_replicas < total_replicas); ON CLUSTER statements on them may hang"
    fi
  done
  retry 120 cluster_ddl_answers ||
    die "an ON CLUSTER statement did not finish on every node within 120 s (a server's DDL worker is stuck: restart it with scripts/stack.sh down cluster, then up cluster)"
}

cluster_nodes_running() {
  local node
  for node in "${CLUSTER_NODES[@]}"; do
    running_pid "cluster/ch$node" >/dev/null && return 0
  done
  return 1
}

# In parallel: each takes a few seconds to shut down.
stop_cluster_nodes() {
  local node pids=()
  for node in "${CLUSTER_NODES[@]}"; do
    # Killed servers leave ZooKeeper sessions behind that keep their replicas read-only after
    # the restart until they expire: give them time to shut down cleanly.
    stop_process "cluster/ch$node" 60 &
    pids+=($!)
  done
  wait "${pids[@]}"
}

# ClickHouse servers first, ZooKeeper last.
down_cluster() {
  stop_cluster_nodes
  stop_process cluster/zookeeper
}

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

print_cluster_env() {
  local node urls=()
  for node in "${CLUSTER_NODES[@]}"; do
    urls+=("http://127.0.0.1:$(cluster_http_port "$node")")
  done
  echo "export TOPK_CLUSTER_CLICKHOUSE_URLS=$(IFS=,; echo "${urls[*]}")"
  echo "export TOPK_CLUSTER_CLICKHOUSE_URL=${urls[0]}"
  echo "export TOPK_CLICKHOUSE_CLUSTER=$CLUSTER_NAME"
  echo "export TOPK_CLUSTER_ZOOKEEPER=127.0.0.1:$CLUSTER_ZK_PORT"
}

selected_services() {
  if [ $# -eq 0 ]; then
    echo "${SERVICES[@]}"
    return
  fi
  for service in "$@"; do
    case "$service" in
      clickhouse|kafka|s3|cluster|zookeeper) echo "$service" ;;
      *) die "unknown service $service (clickhouse, kafka, s3, cluster, zookeeper)" ;;
    esac
  done
}

# has_cluster SERVICE...: the cluster is among them; has_single_node: another service is.
has_cluster() {
  local service
  for service in "$@"; do [ "$service" = cluster ] && return 0; done
  return 1
}
has_single_node() {
  local service
  for service in "$@"; do
    [ "$service" != cluster ] && [ "$service" != zookeeper ] && return 0
  done
  return 1
}

install_for() {
  case "$1" in
    clickhouse) install_clickhouse ;;
    kafka) cargo_install tansu "$TANSU_VERSION" dynostore,libsql "$TANSU_BIN" ;;
    s3) cargo_install garage "$GARAGE_VERSION" "" "$GARAGE_BIN" ;;
    cluster) install_zookeeper && install_clickhouse ;;
    zookeeper) install_zookeeper ;;
  esac
}

say_ready() {
  say "ready; endpoints: $(tr '\n' ' ' <"$1" | sed 's/export //g; s/AWS_SECRET_ACCESS_KEY=[^ ]*/AWS_SECRET_ACCESS_KEY=***/')"
}

cmd_up() {
  mkdir -p "$STACK_DIR"
  local services service
  services=$(selected_services "$@")
  for service in $services; do
    install_for "$service"
  done
  for service in $services; do
    "up_$service"
  done
  # shellcheck disable=SC2086 # one word per service
  if has_single_node $services; then
    print_env >"$STACK_DIR/env"
    say_ready "$STACK_DIR/env"
  fi
  # shellcheck disable=SC2086
  if has_cluster $services; then
    print_cluster_env >"$STACK_DIR/cluster/env"
    say_ready "$STACK_DIR/cluster/env"
  fi
}

cmd_down() {
  local services
  services=$(selected_services "$@")
  # Reverse order: cluster, s3, kafka, clickhouse.
  for service in $(echo "$services" | tr ' ' '\n' | tac); do
    case "$service" in
      cluster) down_cluster ;;
      zookeeper) stop_process cluster/zookeeper ;;
      *) stop_process "$service" ;;
    esac
  done
}

process_status() {
  local pid
  if pid=$(running_pid "$1"); then
    echo "$1: running (pid $pid, log $(log_file "$1"))"
  else
    echo "$1: stopped"
  fi
}

cluster_running() {
  local process
  for process in $(cluster_processes); do
    running_pid "$process" >/dev/null && return 0
  done
  return 1
}

# Without SERVICE: the default services, and the cluster's processes while any of them runs.
cmd_status() {
  local services service process
  services=$(selected_services "$@")
  if [ $# -eq 0 ] && cluster_running; then
    services="$services cluster"
  fi
  for service in $services; do
    case "$service" in
      cluster)
        for process in $(cluster_processes); do
          process_status "$process"
        done
        ;;
      zookeeper) process_status cluster/zookeeper ;;
      *) process_status "$service" ;;
    esac
  done
}

cmd_env() {
  local services
  services=$(selected_services "$@")
  # shellcheck disable=SC2086
  if has_single_node $services; then
    print_env
  fi
  # shellcheck disable=SC2086
  if has_cluster $services; then
    print_cluster_env
  fi
}

cmd_install() {
  if [ $# -eq 0 ]; then
    install_tools
    return
  fi
  local service
  for service in $(selected_services "$@"); do
    install_for "$service"
  done
}

main() {
  local command=${1:-}
  [ $# -gt 0 ] && shift
  case "$command" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    install) cmd_install "$@" ;;
    # The comment block at the top of this file, without the #.
    -h|--help|help|"") sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" ;;
    *) die "unknown command $command (up, down, status, env, install)" ;;
  esac
}

main "$@"
