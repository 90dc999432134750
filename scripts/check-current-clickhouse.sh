#!/usr/bin/env bash
# Checks that the statements the binaries send run on current ClickHouse, not only on the
# local 18.16: runs the pipeline on the local stack with ClickHouse's query log on (the demo,
# a second rollup, a restore of one day from the S3 archive, a prune, API requests for light
# and heavy listeners, alone and coalesced, in the UTC week and local weeks), then replays every logged statement in ClickHouse embedded by chDB
# (scripts/chdb_replay.py) and lists each one that fails there.
#
#   scripts/check-current-clickhouse.sh            # chDB 4.4.0 = ClickHouse 26.9
#   TOPK_CHDB_VERSION=3.7.2 scripts/check-current-clickhouse.sh   # ClickHouse 25.8
#
# chDB is installed from PyPI into a venv under ~/.cache/topk (about 600 MB with its
# dependencies). Not part of the test suite: run it after changing any SQL.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CHDB_VERSION=${TOPK_CHDB_VERSION:-4.4.0}
CACHE=${TOPK_CACHE_DIR:-$HOME/.cache/topk}
VENV=$CACHE/chdb-$CHDB_VERSION
DATABASE=topk_current_check
OUT=.stack/current-check
API_LISTEN=127.0.0.1:18081

step() { echo "==> $*" >&2; }

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import chdb" 2>/dev/null; then
  step "installing chDB $CHDB_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "chdb==$CHDB_VERSION"
fi

scripts/stack.sh up
# shellcheck disable=SC1091
source .stack/env
mkdir -p "$OUT"
query() { curl -fsS "$TOPK_CLICKHOUSE_URL" --data-binary "$1"; }
started=$(query "SELECT toString(now())")

step "the pipeline with the query log on (database $DATABASE)"
export TOPK_CLICKHOUSE_DATABASE=$DATABASE TOPK_CLICKHOUSE_SETTINGS=log_queries=1
TOPK_DEMO_EVENTS=${TOPK_CHECK_EVENTS:-50000} TOPK_DEMO_API_LISTEN=$API_LISTEN scripts/demo.sh >"$OUT/demo.json"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
topic=$(query "SELECT any(topic) FROM $DATABASE.ingest_claims")

step "a second rollup (nothing changed), a restore of yesterday from the archive, a prune"
"$BIN/topk-rollup" run >"$OUT/rollup.log" 2>&1
yesterday=$(date -u -d yesterday +%F)
"$BIN/topk-rollup" restore --from "$yesterday" --to "$yesterday" --plays-topic "$topic" --force \
  >"$OUT/restore.log" 2>&1
"$BIN/topk-rollup" prune >"$OUT/prune.log" 2>&1

step "API requests: the heaviest listeners and light ones"
"$BIN/topk-api" --listen "$API_LISTEN" >"$OUT/api.log" 2>&1 &
api=$!
trap 'kill -TERM $api 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  curl -fsS "http://$API_LISTEN/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
users=$(query "SELECT user_id FROM (SELECT user_id, sum(plays) AS p FROM $DATABASE.plays_minute GROUP BY user_id ORDER BY p DESC LIMIT 5 UNION ALL SELECT user_id, sum(plays) FROM $DATABASE.plays_minute GROUP BY user_id ORDER BY sum(plays) LIMIT 5)")
for user in $users no-such-user; do
  curl -fsS "http://$API_LISTEN/v1/users/$user/top-songs?limit=10" >/dev/null
  curl -fsS "http://$API_LISTEN/v1/users/$user/top-songs?limit=50" >/dev/null
done
# At once, so that requests are coalesced (user_id IN, (user_id, day) pairs), and in local
# weeks east and west of UTC (a partial first day read from minute rows).
requests=()
for user in $users no-such-user; do
  for tz in UTC Europe/Berlin America/Los_Angeles; do
    curl -fsS "http://$API_LISTEN/v1/users/$user/top-songs?limit=10&tz=$tz" >/dev/null &
    requests+=($!)
  done
done
wait "${requests[@]}"
curl -fsS "http://$API_LISTEN/readyz" >/dev/null
kill -TERM $api && wait $api 2>/dev/null || true
trap - EXIT

step "replaying the logged statements on current ClickHouse (chDB $CHDB_VERSION)"
query "SYSTEM FLUSH LOGS" >/dev/null
# Within a second only the order the log stored them in tells which came first (one thread
# reads the parts in the order they were written).
curl -fsS "$TOPK_CLICKHOUSE_URL/?max_threads=1" --data-binary "
       SELECT toString(event_time) AS at, query
       FROM (SELECT rowNumberInAllBlocks() AS n, event_time, query FROM system.query_log
             WHERE event_time >= toDateTime('$started') AND type = 2 AND is_initial_query
               AND has(Settings.Names, 'log_queries'))
       ORDER BY event_time, n
       FORMAT JSONEachRow" >"$OUT/query_log.jsonl"
echo "$(wc -l <"$OUT/query_log.jsonl") statements logged ($OUT/query_log.jsonl)" >&2
"$VENV/bin/python" scripts/chdb_replay.py "$OUT/query_log.jsonl" "$DATABASE" sql
