#!/usr/bin/env bash
# How long tidemq takes to recover an offline queue after a restart, and
# whether every message of it arrives (issue 9: a 100 000-message offline
# queue recovered in under 2 s).
#
#   1. build tidemq and tidemq-bench (release);
#   2. start tidemq with storage on, on a fresh data directory;
#   3. connect a persistent subscriber (mosquitto_sub -c, QoS 1), then leave;
#   4. publish COUNT QoS 1 messages to its filter (tidemq-bench fanin --count,
#      8 publishers, window 100; the bench's own live subscriber is a clean
#      session and only checks that all were acknowledged and delivered);
#   5. stop tidemq with SIGTERM; restart it on the same data directory;
#   6. report (a) elapsed_ms of its "store recovered" log line, (b) the time
#      from process start until the port listens and until an MQTT client
#      gets its SUBACK, (c) how many of the COUNT messages the subscriber then
#      receives (distinct payloads, duplicates), within RECEIVE_TIMEOUT.
#
# Every step is bounded in time; the broker listens on 127.0.0.1 only. Exits
# 0 when every message arrived, 1 when some did not, 2 when a step failed.
#
# Settings (environment):
#   COUNT            100000   messages queued for the offline subscriber
#   SYNC             batch    storage.sync: always, batch or never
#   PORT             21893    the broker's port (127.0.0.1)
#   RECEIVE_TIMEOUT  60       seconds the subscriber may take to receive COUNT
#   SKIP_BUILD=1              use the binaries in target/release as they are
set -uo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
. scripts/lib/broker.sh || exit 2

COUNT=${COUNT:-100000}
SYNC=${SYNC:-batch}
PORT=${PORT:-21893}
RECEIVE_TIMEOUT=${RECEIVE_TIMEOUT:-60}
SKIP_BUILD=${SKIP_BUILD:-0}

# Seconds tidemq may take to listen after it is started (recovery included).
START_TIMEOUT=60
# Seconds tidemq may take to exit after SIGTERM (the store is flushed and
# closed) before SIGKILL.
STOP_TIMEOUT=30
# Logged by stop_broker when tidemq needed SIGKILL.
STOP_KILL_NOTE="tidemq did not exit within ${STOP_TIMEOUT}s of SIGTERM: killed"
# Seconds to wait for a retained $SYS counter.
SYS_WAIT=3
# Seconds the publishing run may take at most (tidemq-bench --duration).
PUBLISH_LIMIT=120
# The persistent subscriber: its client id and its filter, which matches the
# topics of every tidemq-bench fanin run.
SUB_ID=recovery-sub
SUB_FILTER='tidemq-bench/+/fanin/+'

BENCH=target/release/tidemq-bench
TIDEMQ=target/release/tidemq
WORK=$(mktemp -d /tmp/tidemq-recovery.XXXXXX)
DATA=$WORK/data
BROKER_PID=

log() { printf '%s\n' "recovery-bench: $*" >&2; }
fail() {
    log "$*"
    exit 2
}

# Seconds since the epoch with nanoseconds.
now() { date +%s.%N; }
# Milliseconds from $1 to $2 (both from now).
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }

cleanup() {
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# An MQTT client gets its CONNACK and SUBACK (a throwaway clean session).
answers() {
    timeout 3 mosquitto_sub -h 127.0.0.1 -p "$PORT" -i recovery-probe -t recovery/probe -E -W 2 \
        >/dev/null 2>&1
}

# Starts tidemq on $DATA, its log in $1; sets BROKER_PID, STARTED_AT,
# LISTEN_MS (until the port listens) and READY_MS (until a client is
# answered), or fails.
start_broker() {
    local logfile=$1
    STARTED_AT=$(now)
    env TIDEMQ_LISTENER__BIND="127.0.0.1:$PORT" \
        TIDEMQ_STORAGE__ENABLED=true TIDEMQ_STORAGE__DIR="$DATA" TIDEMQ_STORAGE__SYNC="$SYNC" \
        TIDEMQ_LIMITS__MAX_QUEUED_MESSAGES=$((COUNT + 1000)) \
        TIDEMQ_LIMITS__MAX_QUEUED_BYTES=$(((COUNT + 1000) * 1024)) \
        TIDEMQ_SYS__INTERVAL_SECS=1 TIDEMQ_LOG__LEVEL=info \
        "$TIDEMQ" >"$logfile" 2>&1 &
    BROKER_PID=$!
    LISTEN_MS=
    READY_MS=
    local deadline=$((SECONDS + START_TIMEOUT))
    while [ -z "$READY_MS" ]; do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            tail -n 20 "$logfile" >&2
            BROKER_PID=
            fail "tidemq exited while starting (log above)"
        fi
        [ $SECONDS -lt $deadline ] || fail "tidemq did not answer within ${START_TIMEOUT}s"
        if [ -z "$LISTEN_MS" ] && listening "$PORT"; then
            LISTEN_MS=$(ms_between "$STARTED_AT" "$(now)")
        fi
        if [ -n "$LISTEN_MS" ] && answers; then
            READY_MS=$(ms_between "$STARTED_AT" "$(now)")
        else
            sleep 0.01
        fi
    done
}

# A field (name=value) of the last log line containing $2, without colours.
log_field() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep "$2" | tail -n 1 |
        grep -o "$3=[^ ]*" | head -n 1 | cut -d= -f2
}

# --- setup ------------------------------------------------------------------

command -v mosquitto_sub >/dev/null || fail "needs mosquitto_sub (Debian: mosquitto-clients)"
build_binaries || fail "build failed"
if listening "$PORT"; then
    fail "port $PORT is already in use; set PORT"
fi

# --- fill the queue ---------------------------------------------------------

log "starting tidemq (storage on, sync=$SYNC) on a fresh $DATA"
start_broker "$WORK/first.log"
log "persistent subscriber $SUB_ID subscribes to $SUB_FILTER (QoS 1) and leaves"
timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -i "$SUB_ID" -c -q 1 -t "$SUB_FILTER" -E -W 5 \
    >/dev/null || fail "the persistent subscriber could not subscribe"

log "publishing $COUNT QoS 1 messages (tidemq-bench fanin --count $COUNT)"
timeout $((PUBLISH_LIMIT + 30)) "$BENCH" fanin --port "$PORT" --qos 1 --publishers 8 --inflight 100 \
    --count "$COUNT" --duration "${PUBLISH_LIMIT}s" --label "tidemq-$SYNC" --quiet --json \
    >"$WORK/publish.json" || fail "tidemq-bench failed: $(cat "$WORK/publish.json")"
publish_line=$(sed -n 's/.*"sent":\([0-9]*\).*"received":\([0-9]*\).*"lost":\([0-9]*\).*"acked":\([0-9]*\).*/sent \1, acknowledged \4; live clean subscriber received \2, lost \3/p' "$WORK/publish.json")
log "$publish_line"
sleep 1.5 # one $SYS interval, so the counters include the whole run
dropped=$(sys_counter "$PORT" dropped_queue_full)
log "dropped_queue_full before restart: $dropped"

log "stopping tidemq (SIGTERM)"
stop_started=$(now)
stop_broker
stop_ms=$(ms_between "$stop_started" "$(now)")
closed=$(store_closed_line "$WORK/first.log")

# --- restart and drain --------------------------------------------------------

log "restarting tidemq on the same data directory ($(du -sh "$DATA" 2>/dev/null | cut -f1) on disk)"
start_broker "$WORK/second.log"
recovered_ms=$(log_field "$WORK/second.log" 'store recovered' elapsed_ms)
recovered_queued=$(log_field "$WORK/second.log" 'store recovered' queued)

log "persistent subscriber $SUB_ID returns (at most $COUNT messages or ${RECEIVE_TIMEOUT}s)"
receive_started=$(now)
timeout $((RECEIVE_TIMEOUT + 10)) mosquitto_sub -h 127.0.0.1 -p "$PORT" -i "$SUB_ID" -c -q 1 \
    -t "$SUB_FILTER" -C "$COUNT" -W "$RECEIVE_TIMEOUT" -F '%x' >"$WORK/received" 2>/dev/null
receive_ms=$(ms_between "$receive_started" "$(now)")
received=$(wc -l <"$WORK/received")
distinct=$(sort -u "$WORK/received" | wc -l)
stop_broker

# --- report -------------------------------------------------------------------

echo
echo "recovery-bench: COUNT=$COUNT SYNC=$SYNC ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo "publish:            $publish_line"
echo "before restart:     dropped_queue_full=$dropped; graceful stop took ${stop_ms} ms"
echo "                    ${closed:-no \"store closed\" line in the log}"
echo "(a) store recovered: elapsed_ms=${recovered_ms:-n/a} queued=${recovered_queued:-n/a}${recovered_ms:+ (target: < 2000 ms)}"
[ -n "$recovered_ms" ] || echo "                    no \"store recovered\" line in the log: this tidemq has no store yet?"
echo "(b) from start:     listening after ${LISTEN_MS} ms, first client answered after ${READY_MS} ms"
echo "(c) delivered:      $received received, $distinct distinct, $((received - distinct)) duplicates, of $COUNT, in ${receive_ms} ms"
if [ "$distinct" -ge "$COUNT" ]; then
    echo "result: every message arrived after the restart"
    exit 0
fi
echo "result: $((COUNT - distinct)) of $COUNT messages did not arrive after the restart"
exit 1
