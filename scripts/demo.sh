#!/usr/bin/env bash
# The whole pipeline end to end on the local stack, with sample data:
#   stack up -> build -> migrate -> topics -> aggregator -> sample play events -> drained
#   -> nightly rollup -> API -> one user's top 10 beside the global chart of the last 24 h.
# The stack stays up afterwards (scripts/stack.sh down stops it); the aggregator and the API
# are stopped when the demo ends.
#
# Env: TOPK_DEMO_EVENTS (default 200000), TOPK_DEMO_USER (default user-1),
#      TOPK_DEMO_API_LISTEN (default 127.0.0.1:18080), CARGO_TARGET_DIR as usual.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

EVENTS=${TOPK_DEMO_EVENTS:-200000}
DEMO_USER=${TOPK_DEMO_USER:-user-1}
API_LISTEN=${TOPK_DEMO_API_LISTEN:-127.0.0.1:18080}
METRICS_LISTEN=127.0.0.1:19464
RUN_ID=$(date +%s)
export TOPK_PLAYS_TOPIC=demo-plays-$RUN_ID
export TOPK_DEAD_LETTER_TOPIC=demo-plays-dead-letter-$RUN_ID
export TOPK_CLICKHOUSE_DATABASE=${TOPK_CLICKHOUSE_DATABASE:-topk_demo}

step() { echo "==> $*" >&2; }

step "local stack (first run builds tansu and garage: ~30 min on 2 cores)"
scripts/stack.sh up
# shellcheck disable=SC1091
source .stack/env

step "building the binaries"
cargo build --workspace --bins --locked
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

step "schema migrations ($TOPK_CLICKHOUSE_DATABASE, emptied first: a database serves one topic)"
curl -fsS "$TOPK_CLICKHOUSE_URL" --data-binary "DROP DATABASE IF EXISTS \`$TOPK_CLICKHOUSE_DATABASE\`" >/dev/null
"$BIN/topk-rollup" migrate

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
mkdir -p .stack/demo

step "song catalog: a sample of 20000 songs, loaded by topk-catalog"
"$BIN/topk-loadgen" --events 0 --songs 20000 --create-partitions 4 \
  --create-topics "$TOPK_DEAD_LETTER_TOPIC" --catalog-out .stack/demo/catalog.ndjson >/dev/null
"$BIN/topk-catalog" load .stack/demo/catalog.ndjson

step "starting topk-aggregator (log: .stack/demo/aggregator.log)"
"$BIN/topk-aggregator" --flush-interval-ms 1000 --metrics-listen "$METRICS_LISTEN" \
  >.stack/demo/aggregator.log 2>&1 &
pids+=($!)

step "producing $EVENTS sample play events (Zipf users and songs, 1% duplicates, 1% malformed, 30% from earlier this week)"
"$BIN/topk-loadgen" --events "$EVENTS" --late-share 0.3 --users 5000 --songs 20000

step "waiting until the aggregator has flushed everything"
metric_sum() {
  curl -fsS "http://$METRICS_LISTEN/metrics" 2>/dev/null |
    awk -v name="$1" '$1 ~ "^"name"[{ ]" || $1 == name {sum += $2} END {print sum + 0}'
}
settled=0
for _ in $(seq 1 180); do
  sleep 1
  counted=$(metric_sum topk_aggregator_events_total)
  buffered=$(metric_sum topk_aggregator_buffer_rows)
  if [ "${counted%.*}" -ge "$EVENTS" ] && [ "${buffered%.*}" = 0 ]; then
    settled=$((settled + 1))
    [ $settled -ge 2 ] && break
  else
    settled=0
  fi
done
[ $settled -ge 2 ] || { echo "the aggregator did not drain in 3 minutes; see .stack/demo/aggregator.log" >&2; exit 1; }
curl -fsS "http://$METRICS_LISTEN/metrics" | grep -E '^topk_aggregator_(events_total|dead_letters_total)' >&2

step "rollup of the previous days"
"$BIN/topk-rollup" run

step "starting topk-api on $API_LISTEN (log: .stack/demo/api.log)"
"$BIN/topk-api" --listen "$API_LISTEN" >.stack/demo/api.log 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do
  curl -fsS "http://$API_LISTEN/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

step "top 10 songs of $DEMO_USER over the last 7 days, beside the global chart of the last 24 hours, with titles from the catalog"
curl -fsS "http://$API_LISTEN/v1/users/$DEMO_USER/top-songs?limit=10&include=metadata" >.stack/demo/user.json
curl -fsS "http://$API_LISTEN/v1/charts/top-songs?window=24h&limit=10&include=metadata" >.stack/demo/chart.json
python3 - .stack/demo/user.json .stack/demo/chart.json <<'PY'
import json, sys
user = json.load(open(sys.argv[1]))
chart = json.load(open(sys.argv[2]))

def line(song, count):
    meta = song.get("metadata") or {}
    title = "%s - %s" % (meta.get("title", "?"), meta.get("artist_name", "?"))
    return "%2d %6d %-9s %-36.36s" % (song["rank"], song[count], song["song_id"], title)

left = ["%s, last 7 days (exact=%s)" % (user["user_id"], user["exact"]),
        "   plays song"] + [line(song, "plays") for song in user["songs"]]
right = ["everyone, last 24 h (%d songs charted)" % chart["total"],
         "   plays song      listeners, previous rank"] + [
    "%s %5d  %s" % (line(song, "plays"), song["listeners"], song["prev_rank"] or "new")
    for song in chart["songs"]]
for index in range(max(len(left), len(right))):
    a = left[index] if index < len(left) else ""
    b = right[index] if index < len(right) else ""
    print("%-58s | %s" % (a, b))
print("data through %s (user), %s (chart)" % (user["data_through"], chart["data_through"]))
PY
step "the same answers as JSON: curl http://$API_LISTEN/v1/users/$DEMO_USER/top-songs?include=metadata and http://$API_LISTEN/v1/charts/top-songs?window=24h&include=metadata"
