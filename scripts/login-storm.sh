#!/usr/bin/env bash
# A login storm beside live traffic: does password hashing stall other
# clients? Starts the release tidemq (broker on CPU 0, clients on CPU 1)
# with a password file of argon2id entries (`tidemq passwd`), runs
# tidemq-bench's latency scenario (1 publisher -> 1 subscriber, QoS 0,
# RATE msg/s, anonymous) twice: once alone, once while LOGINS CONNECTs with
# the right password (PARALLEL at a time, mosquitto_pub -u -P) hit the
# broker. Prints both runs' latency percentiles and the logins per second.
# Bounded: each run lasts DURATION, the storm is cut at the same time.
#
# Settings (environment): RATE (1000), DURATION (10s), LOGINS (300),
# PARALLEL (50), PORT (22883), SKIP_BUILD=1 to use target/release as is.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
. scripts/lib/broker.sh || exit 1

RATE=${RATE:-1000}
DURATION=${DURATION:-10s}
LOGINS=${LOGINS:-300}
PARALLEL=${PARALLEL:-50}
PORT=${PORT:-22883}
SKIP_BUILD=${SKIP_BUILD:-0}
START_TIMEOUT=15
STOP_TIMEOUT=10
TIDEMQ=target/release/tidemq
BENCH=target/release/tidemq-bench
BROKER_PID=
WORK=$(mktemp -d /tmp/tidemq-login-storm.XXXXXX)
log() { printf '%s\n' "login-storm: $*" >&2; }
cleanup() { stop_broker; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v mosquitto_pub >/dev/null || { log "needs mosquitto_pub (apt-get install mosquitto-clients)"; exit 1; }
build_binaries || exit 1
"$TIDEMQ" passwd -b secret "$WORK/passwd" alice 2>/dev/null || exit 1
cat >"$WORK/tidemq.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$PORT"
[auth]
password_file = "$WORK/passwd"
[storage]
enabled = false
[log]
level = "warn"
CONF

run() {
    local label=$1 storm=$2
    env $PIN_BROKER "$TIDEMQ" -c "$WORK/tidemq.toml" >"$WORK/$label.log" 2>&1 &
    BROKER_PID=$!
    wait_listening "$PORT" tidemq "$WORK/$label.log" || return 1
    $PIN_TOOL "$BENCH" latency --port "$PORT" --rate "$RATE" --duration "$DURATION" \
        --broker-pid "$BROKER_PID" --label "$label" --json --quiet >"$WORK/$label.json" &
    local bench=$!
    if [ "$storm" = 1 ]; then
        sleep 1 # the latency run is under way
        local start end ok
        start=$(date +%s.%N)
        ok=$(seq "$LOGINS" | timeout "${DURATION%s}" $PIN_TOOL xargs -P "$PARALLEL" -I{} \
            sh -c "mosquitto_pub -h 127.0.0.1 -p $PORT -i storm-{} -u alice -P secret -t storm -m x && echo ok" 2>/dev/null | grep -c ok)
        end=$(date +%s.%N)
        echo "$ok of $LOGINS logins in $(echo "$end - $start" | bc) s: $(echo "scale=1; $ok / ($end - $start)" | bc) logins/s" >"$WORK/storm.txt"
    fi
    wait "$bench"
    stop_broker
}

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_BROKER="taskset -c 0"; PIN_TOOL="taskset -c 1"
else
    PIN_BROKER=""; PIN_TOOL=""
fi
run quiet 0 || exit 1
run storm 1 || exit 1
"$BENCH" report "$WORK/quiet.json" "$WORK/storm.json" --baseline quiet
cat "$WORK/storm.txt"
