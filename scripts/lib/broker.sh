# shellcheck shell=bash
# Helpers shared by scripts/bench.sh, scripts/soak.sh and
# scripts/recovery-bench.sh, sourced after their `cd` to the repository root:
#     . scripts/lib/broker.sh
# Defines functions only. They use what the sourcing script sets:
#   log              its own function printing one line to stderr
#   BROKER_PID       the pid of the running broker, empty when none
#   START_TIMEOUT    seconds a broker may take to listen after it is started
#   STOP_TIMEOUT     seconds a broker may take to exit after SIGTERM
#   STOP_KILL_NOTE   optional: logged when a broker needed SIGKILL
#   SYS_WAIT         seconds to wait for a retained $SYS counter
#   SKIP_BUILD, TIDEMQ, BENCH   for build_binaries
# and work under `set -uo pipefail` (no -e: failures are return codes).

# Builds tidemq and tidemq-bench (release) unless SKIP_BUILD=1; fails when cargo does.
build_binaries() {
    if [ "$SKIP_BUILD" = 1 ]; then
        log "SKIP_BUILD=1: using $TIDEMQ and $BENCH as built"
    else
        log "building tidemq and tidemq-bench (release)"
        cargo build --release -q -p tidemq -p tidemq-bench
    fi
}

# Whether something listens on TCP port $1 of 127.0.0.1 (ss, else /dev/tcp).
listening() {
    if command -v ss >/dev/null; then
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Waits until port $1 listens; fails, logging "$2 did not start" and the tail of log $3, if BROKER_PID exits or START_TIMEOUT passes.
wait_listening() {
    local port=$1 name=$2 logfile=$3 waited=0
    until listening "$port"; do
        if ! kill -0 "$BROKER_PID" 2>/dev/null || [ $waited -ge $((START_TIMEOUT * 10)) ]; then
            log "$name did not start; its log:"
            tail -n 20 "$logfile" >&2
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Stops BROKER_PID (if any): SIGTERM, up to STOP_TIMEOUT s, then SIGKILL (logging STOP_KILL_NOTE if set); clears BROKER_PID.
stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null
    local waited=0
    while kill -0 "$BROKER_PID" 2>/dev/null && [ $waited -lt $((STOP_TIMEOUT * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        [ -z "${STOP_KILL_NOTE:-}" ] || log "$STOP_KILL_NOTE"
        kill -KILL "$BROKER_PID" 2>/dev/null
    fi
    wait "$BROKER_PID" 2>/dev/null
    BROKER_PID=
}

# The value of the retained $SYS/broker/tidemq/$2 counter of the broker on port $1 (waiting up to SYS_WAIT s), or "-".
# Builds before issue 11 published it as $SYS/broker/$2: both are asked for, only one exists.
sys_counter() {
    local value
    value=$(timeout $((SYS_WAIT + 2)) mosquitto_sub -h 127.0.0.1 -p "$1" -t "\$SYS/broker/tidemq/$2" -t "\$SYS/broker/$2" -C 1 -W "$SYS_WAIT" 2>/dev/null)
    echo "${value:--}"
}

# The last "store closed ..." line of tidemq log $1, without colours or the part before it; nothing if none.
store_closed_line() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep 'store closed' | tail -n 1 | sed 's/.*store closed/store closed/'
}
