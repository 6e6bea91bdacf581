#!/usr/bin/env bash
# Soak test for tidemq with storage on (issue 9): an hour of mixed traffic,
# the store's size on disk and the broker's RSS sampled each minute; both
# should stay flat.
#
# Traffic, all at bounded rates (about 3 000 messages/s in, 5 000 out, on
# 127.0.0.1 only), for SOAK_SECS:
#   - QoS 0: tidemq-bench pairs, 4 clean publisher/subscriber pairs, 1 000 msg/s;
#   - QoS 1: tidemq-bench fanin, 4 publishers -> 1 persistent subscriber
#     (soak-q1), 1 000 msg/s;
#   - QoS 2: tidemq-bench fanin over MQTT 5, 2 publishers -> 1 persistent
#     subscriber (soak-q2, session expiry 1 h), 500 msg/s;
#   - QoS 1 fan-out: tidemq-bench fanout, 1 publisher -> 4 clean subscribers,
#     200 msg/s;
#   - retained: RETAINED_PER_S mosquitto_pub -r a second over RETAINED_TOPICS
#     topics (each rewritten again and again), every 50th a clear;
#   - a persistent subscriber (mosquitto_sub -c, QoS 1, soak-flappy) on both
#     fanin streams, online FLAP_ON seconds, offline FLAP_OFF, again and
#     again: its queue fills on disk and drains.
# Every SAMPLE_SECS: seconds since start, `du -sb` of the data directory,
# VmRSS from /proc/PID/status and $SYS/broker/tidemq/storage_bytes_current, into a
# CSV. At the end: min / max / first / last of each, and "flat" when the
# last sample is within FLAT_PERCENT of the sample at 10% of the run; then
# the load tool's report (loss, duplicates) per stream and the broker's
# "store closed" line. Every loop and every client is bounded by the run's
# end; the broker gets SIGTERM, then SIGKILL after STOP_TIMEOUT.
#
# Settings (environment):
#   SOAK_SECS      3600 (or DURATION, in seconds)  how long the traffic runs
#   SAMPLE_SECS    60, less for short runs (a twelfth of SOAK_SECS, at least 1)
#   SYNC           batch     storage.sync: always, batch or never
#   PORT           21895     the broker's port (127.0.0.1)
#   FLAT_PERCENT   20
#   RETAINED_TOPICS 200, RETAINED_PER_S 10, FLAP_ON 20, FLAP_OFF 10
#   OUT            target/soak/soak-<time>.csv
#   SKIP_BUILD=1   use the binaries in target/release as they are
# Short run: SOAK_SECS=120 scripts/soak.sh
set -uo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
. scripts/lib/broker.sh || exit 2

SOAK_SECS=${SOAK_SECS:-${DURATION:-3600}}
SOAK_SECS=${SOAK_SECS%s}
case $SOAK_SECS in '' | *[!0-9]*) echo "soak: SOAK_SECS must be whole seconds" >&2; exit 2 ;; esac
default_sample=$((SOAK_SECS / 12))
[ $default_sample -le 60 ] || default_sample=60
[ $default_sample -ge 1 ] || default_sample=1
SAMPLE_SECS=${SAMPLE_SECS:-$default_sample}
SYNC=${SYNC:-batch}
PORT=${PORT:-21895}
FLAT_PERCENT=${FLAT_PERCENT:-20}
RETAINED_TOPICS=${RETAINED_TOPICS:-200}
RETAINED_PER_S=${RETAINED_PER_S:-10}
FLAP_ON=${FLAP_ON:-20}
FLAP_OFF=${FLAP_OFF:-10}
OUT=${OUT:-target/soak/soak-$(date +%Y%m%d-%H%M%S).csv}
SKIP_BUILD=${SKIP_BUILD:-0}

# Seconds tidemq may take to listen after it is started.
START_TIMEOUT=30
# Seconds tidemq may take to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT=30
# Seconds to wait for a retained $SYS counter in a sample.
SYS_WAIT=2
# Seconds a load-tool run may outlive SOAK_SECS (its drain and report).
BENCH_GRACE=30
# Messages one offline persistent session may have queued: the flapping
# subscriber misses FLAP_OFF seconds of two streams (1 500 msg/s).
MAX_QUEUED=100000

BENCH=target/release/tidemq-bench
TIDEMQ=target/release/tidemq
WORK=$(mktemp -d /tmp/tidemq-soak.XXXXXX)
DATA=$WORK/data
BROKER_PID=
# Every background process this script started, to end them by pid.
CHILDREN=()

log() { printf '%s\n' "soak: $*" >&2; }

stop_children() {
    local pid
    for pid in "${CHILDREN[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${CHILDREN[@]}"; do
        wait "$pid" 2>/dev/null
    done
    CHILDREN=()
}

cleanup() {
    stop_children
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Rewrites retained topics until END: RETAINED_PER_S a second, round the
# RETAINED_TOPICS topics, every 50th message a clear (empty payload).
retained_loop() {
    local n=0 i padding
    padding=$(printf '%0150d' 0)
    while [ "$(date +%s)" -lt "$END" ]; do
        for ((i = 0; i < RETAINED_PER_S; i++)); do
            local topic="soak/retained/$((n % RETAINED_TOPICS))"
            if [ $((n % 50)) -eq 49 ]; then
                timeout 5 mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -r -t "$topic" -n
            else
                timeout 5 mosquitto_pub -h 127.0.0.1 -p "$PORT" -q 1 -r -t "$topic" -m "$n $padding"
            fi
            n=$((n + 1))
        done
        sleep 1
    done
    echo "$n" >"$WORK/retained.count"
}

# A persistent QoS 1 subscriber that comes and goes until END; appends the
# messages of each visit to flappy.counts.
flappy_loop() {
    local on
    while [ "$(date +%s)" -lt "$END" ]; do
        on=$((END - $(date +%s)))
        [ $on -le "$FLAP_ON" ] || on=$FLAP_ON
        [ $on -ge 1 ] || break
        # --kill-after: mosquitto_sub can deadlock in its SIGTERM handler
        # (seen here: stuck on a futex after -W and timeout's TERM), which
        # would leave the session offline for the rest of the soak.
        timeout --kill-after=2 $((on + 5)) mosquitto_sub -h 127.0.0.1 -p "$PORT" -i soak-flappy -c -q 1 \
            -t 'tidemq-bench/+/fanin/+' -W "$on" -F x 2>/dev/null | wc -l >>"$WORK/flappy.counts"
        sleep "$FLAP_OFF"
    done
}

# min max first last of column $2 (1-based) of CSV $1, or "- - - -".
column_stats() {
    awk -F, -v c="$2" 'NR > 1 && $c ~ /^[0-9]+$/ {
            if (n == 0) { min = $c; max = $c; first = $c }
            if ($c < min) min = $c
            if ($c > max) max = $c
            last = $c; n++
        }
        END { if (n) print min, max, first, last; else print "- - - -" }' "$1"
}

# The value of column $2 in the first sample at or after $3 seconds.
value_at() {
    awk -F, -v c="$2" -v t="$3" 'NR > 1 && $1 >= t && $c ~ /^[0-9]+$/ { print $c; exit }' "$1"
}

# "flat", "not flat" or "n/a": is LAST within FLAT_PERCENT of REFERENCE?
flatness() {
    local reference=$1 last=$2
    case "$reference$last" in *[!0-9]* | '') echo "n/a"; return ;; esac
    awk -v r="$reference" -v l="$last" -v p="$FLAT_PERCENT" 'BEGIN {
        d = l - r; if (d < 0) d = -d
        if (r == 0) { print (l == 0 ? "flat (both 0)" : "not flat"); exit }
        printf "%s (last %+.1f%% of the sample at 10%%)\n", (d * 100 <= p * r ? "flat" : "not flat"), (l - r) * 100 / r
    }'
}

# --- setup ------------------------------------------------------------------

for tool in mosquitto_sub mosquitto_pub; do
    command -v "$tool" >/dev/null || { log "needs $tool (Debian: mosquitto-clients)"; exit 2; }
done
build_binaries || { log "build failed"; exit 2; }
if listening "$PORT"; then
    log "port $PORT is already in use; set PORT"
    exit 2
fi
mkdir -p "$(dirname "$OUT")"

log "starting tidemq (storage on, sync=$SYNC) on a fresh $DATA, port $PORT"
env TIDEMQ_LISTENER__BIND="127.0.0.1:$PORT" \
    TIDEMQ_STORAGE__ENABLED=true TIDEMQ_STORAGE__DIR="$DATA" TIDEMQ_STORAGE__SYNC="$SYNC" \
    TIDEMQ_LIMITS__MAX_QUEUED_MESSAGES=$MAX_QUEUED TIDEMQ_SYS__INTERVAL_SECS=10 \
    TIDEMQ_LOG__LEVEL="warn,tidemq::store=info,tidemq::recovery=info,tidemq::server=info" \
    "$TIDEMQ" >"$WORK/tidemq.log" 2>&1 &
BROKER_PID=$!
wait_listening "$PORT" tidemq "$WORK/tidemq.log" || exit 2

# --- traffic ----------------------------------------------------------------

START=$(date +%s)
END=$((START + SOAK_SECS))
log "traffic for ${SOAK_SECS}s, a sample every ${SAMPLE_SECS}s into $OUT"

# name, then tidemq-bench arguments
streams=(
    "qos0-pairs|pairs --qos 0 --pairs 4 --rate 1000"
    "qos1-persistent|fanin --qos 1 --publishers 4 --rate 1000 --persistent-subscriber --subscriber-id soak-q1"
    "qos2-persistent-v5|fanin --qos 2 --mqtt 5 --publishers 2 --rate 500 --persistent-subscriber --subscriber-id soak-q2"
    "qos1-fanout|fanout --qos 1 --subscribers 4 --rate 200"
)
for stream in "${streams[@]}"; do
    name=${stream%%|*}
    # shellcheck disable=SC2086 # the stream's arguments are a word list
    timeout --kill-after=5 $((SOAK_SECS + BENCH_GRACE)) "$BENCH" ${stream#*|} --port "$PORT" \
        --duration "${SOAK_SECS}s" --drain 5s --label "$name" --json --quiet \
        >"$WORK/bench-$name.json" 2>"$WORK/bench-$name.err" &
    CHILDREN+=($!)
done
retained_loop &
CHILDREN+=($!)
flappy_loop &
CHILDREN+=($!)

# --- samples ----------------------------------------------------------------

echo "t_s,data_bytes,rss_kib,storage_bytes" >"$OUT"
next=$START
while :; do
    now=$(date +%s)
    if [ "$now" -lt "$next" ]; then
        sleep 1
        continue
    fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        log "tidemq exited during the soak; its log tail:"
        tail -n 5 "$WORK/tidemq.log" >&2
        BROKER_PID=
        break
    fi
    data=$(du -sb "$DATA" 2>/dev/null | cut -f1)
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$BROKER_PID/status" 2>/dev/null)
    echo "$((now - START)),${data:-0},${rss:--},$(sys_counter "$PORT" storage_bytes_current)" >>"$OUT"
    [ "$now" -lt "$END" ] || break
    next=$((next + SAMPLE_SECS))
    [ "$next" -le "$END" ] || next=$END
done

log "traffic over; waiting for the load tools' reports"
for pid in "${CHILDREN[@]}"; do
    wait "$pid" 2>/dev/null
done
CHILDREN=()
stop_broker
closed=$(store_closed_line "$WORK/tidemq.log")

# --- report -----------------------------------------------------------------

echo
echo "soak: ${SOAK_SECS}s, sync=$SYNC, a sample every ${SAMPLE_SECS}s ($(($(wc -l <"$OUT") - 1)) samples) in $OUT"
printf '%-14s %14s %14s %14s %14s  %s\n' "" min max first last "last vs the sample at 10% of the run"
ten=$((SOAK_SECS / 10))
for column in 2:data_bytes 3:rss_kib 4:storage_bytes; do
    read -r min max first last <<<"$(column_stats "$OUT" "${column%%:*}")"
    printf '%-14s %14s %14s %14s %14s  %s\n' "${column#*:}" "$min" "$max" "$first" "$last" \
        "$(flatness "$(value_at "$OUT" "${column%%:*}" "$ten")" "$last")"
done
echo
echo "retained messages published: $(cat "$WORK/retained.count" 2>/dev/null || echo 0) over $RETAINED_TOPICS topics"
echo "flapping persistent subscriber: $(wc -l <"$WORK/flappy.counts" 2>/dev/null || echo 0) visits," \
    "$(awk '{s += $1} END {print s + 0}' "$WORK/flappy.counts" 2>/dev/null) messages"
echo "${closed:-no \"store closed\" line in the log of tidemq}"
echo
cat "$WORK"/bench-*.json >"$WORK/all.json"
"$BENCH" report "$WORK/all.json" --baseline none | sed '/^Ratios/,$d'
for err in "$WORK"/bench-*.err; do
    [ -s "$err" ] && sed "s|^|$(basename "$err" .err): |" "$err"
done
exit 0
