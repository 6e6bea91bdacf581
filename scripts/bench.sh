#!/usr/bin/env bash
# Compares tidemq with mosquitto, rumqttd and nats-server using tidemq-bench.
#
# Builds tidemq and tidemq-bench in release mode, installs the peers that are
# missing (apt: mosquitto, nats-server; cargo: rumqttd 0.20.0), then for each
# scenario, QoS and MQTT version runs every broker one after the other, each
# freshly started on its own loopback port, the broker pinned to CPU 0 and the
# load tool to CPU 1. Prints every run and the ratios tidemq / peer at the end.
# A peer that cannot be installed or started is skipped and said so; every
# step is bounded in time; all traffic stays on 127.0.0.1.
#
# Settings (environment):
#   SCENARIOS   "fanin fanout pairs latency conns"
#   BROKERS     "tidemq mosquitto rumqttd nats"
#   DURATION    10s          how long each run publishes (or holds connections)
#   QOS         "0 1"        QoS levels for the publish/subscribe scenarios
#   MQTT        "4"          MQTT versions: 4 (3.1.1) and/or 5
#   CONNS       10000        connections held by the conns scenario
#   PORT_BASE   21883        first of the six ports used
#   BENCH_ARGS  ""           extra tidemq-bench options, e.g. "--payload 256"
#   OUT         target/bench/results-<time>.jsonl   one JSON object per run
set -uo pipefail

cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"fanin fanout pairs latency conns"}
BROKERS=${BROKERS:-"tidemq mosquitto rumqttd nats"}
DURATION=${DURATION:-10s}
QOS=${QOS:-"0 1"}
MQTT=${MQTT:-4}
CONNS=${CONNS:-10000}
PORT_BASE=${PORT_BASE:-21883}
BENCH_ARGS=${BENCH_ARGS:-}
OUT=${OUT:-target/bench/results-$(date +%Y%m%d-%H%M%S).jsonl}

RUMQTTD_VERSION=0.20.0
# How long a broker may take to listen after it is started, in seconds.
START_TIMEOUT=15
# How long a broker may take to exit after SIGTERM before SIGKILL, in seconds.
STOP_TIMEOUT=5

PORT_TIDEMQ=$PORT_BASE
PORT_MOSQUITTO=$((PORT_BASE + 1))
PORT_RUMQTTD_V4=$((PORT_BASE + 2))
PORT_RUMQTTD_V5=$((PORT_BASE + 3))
PORT_NATS_MQTT=$((PORT_BASE + 4))
PORT_NATS_CLIENT=$((PORT_BASE + 5))

BENCH=target/release/tidemq-bench
TIDEMQ=target/release/tidemq
WORK=$(mktemp -d /tmp/tidemq-bench.XXXXXX)
BROKER_PID=
declare -A SKIP_REASON=()
NOTES=()

log() { printf '%s\n' "bench: $*" >&2; }

cleanup() {
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Seconds in a DURATION like 10s, 500ms, 2m or 7; 60 when unsure.
duration_secs() {
    local d=$1
    case $d in
        *ms) echo 1 ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *s) echo "${d%s}" | cut -d. -f1 ;;
        *[!0-9.]*) echo 60 ;;
        *) echo "$d" | cut -d. -f1 ;;
    esac
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$WORK/apt.log" 2>&1 && return 0
    as_root apt-get update -qq >>"$WORK/apt.log" 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$WORK/apt.log" 2>&1
}

# The path of a program, also looking where Debian puts daemons.
find_program() {
    local name=$1
    for candidate in "$(command -v "$name" 2>/dev/null)" "/usr/sbin/$name" "$HOME/.cargo/bin/$name"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_peer() {
    local broker=$1
    case $broker in
        tidemq) return 0 ;;
        mosquitto|nats)
            local pkg=$broker prog=$broker
            [ "$broker" = nats ] && pkg=nats-server prog=nats-server
            if ! find_program "$prog" >/dev/null; then
                log "installing $pkg (apt-get)"
                apt_install "$pkg" || true
            fi
            find_program "$prog" >/dev/null || SKIP_REASON[$broker]="apt-get install $pkg failed (see its log above)"
            ;;
        rumqttd)
            if ! find_program rumqttd >/dev/null; then
                log "installing rumqttd $RUMQTTD_VERSION (cargo install, a few minutes)"
                # Without --locked: its lock file pins crates that no longer
                # build on a current rustc.
                timeout 1200 cargo install rumqttd --version "$RUMQTTD_VERSION" >"$WORK/rumqttd-install.log" 2>&1 \
                    || tail -n 5 "$WORK/rumqttd-install.log" >&2
            fi
            if find_program rumqttd >/dev/null; then
                local version
                version=$("$(find_program rumqttd)" --version 2>/dev/null | awk '{print $2}')
                [ "$version" = "$RUMQTTD_VERSION" ] || NOTES+=("rumqttd is version ${version:-unknown}, not $RUMQTTD_VERSION")
            else
                SKIP_REASON[rumqttd]="cargo install rumqttd --version $RUMQTTD_VERSION failed"
            fi
            ;;
        *) SKIP_REASON[$broker]="unknown broker (known: tidemq mosquitto rumqttd nats)" ;;
    esac
}

# Fills in a config template from configs/bench/.
render_config() {
    local template=$1 out=$2
    sed -e "s|@PORT@|$3|g" -e "s|@PORT4@|$PORT_RUMQTTD_V4|g" -e "s|@PORT5@|$PORT_RUMQTTD_V5|g" \
        -e "s|@CLIENT_PORT@|$PORT_NATS_CLIENT|g" -e "s|@STORE_DIR@|$WORK/nats-js|g" \
        "configs/bench/$template" >"$out"
}

# The MQTT port of a broker for an MQTT version.
broker_port() {
    case $1 in
        tidemq) echo "$PORT_TIDEMQ" ;;
        mosquitto) echo "$PORT_MOSQUITTO" ;;
        rumqttd) if [ "$2" = 5 ]; then echo "$PORT_RUMQTTD_V5"; else echo "$PORT_RUMQTTD_V4"; fi ;;
        nats) echo "$PORT_NATS_MQTT" ;;
    esac
}

listening() {
    if command -v ss >/dev/null; then
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Starts a broker pinned to CPU 0; sets BROKER_PID. Fails if it does not
# listen within START_TIMEOUT.
start_broker() {
    local broker=$1 port=$2 logfile="$WORK/$1.log"
    case $broker in
        tidemq)
            render_config tidemq.toml "$WORK/tidemq.toml" "$PORT_TIDEMQ"
            $PIN_BROKER "$TIDEMQ" -c "$WORK/tidemq.toml" >"$logfile" 2>&1 &
            ;;
        mosquitto)
            render_config mosquitto.conf "$WORK/mosquitto.conf" "$PORT_MOSQUITTO"
            $PIN_BROKER "$(find_program mosquitto)" -c "$WORK/mosquitto.conf" >"$logfile" 2>&1 &
            ;;
        rumqttd)
            render_config rumqttd.toml "$WORK/rumqttd.toml" ""
            $PIN_BROKER "$(find_program rumqttd)" -q -c "$WORK/rumqttd.toml" >"$logfile" 2>&1 &
            ;;
        nats)
            rm -rf "$WORK/nats-js"
            render_config nats.conf "$WORK/nats.conf" "$PORT_NATS_MQTT"
            $PIN_BROKER "$(find_program nats-server)" -c "$WORK/nats.conf" >"$logfile" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    local waited=0
    until listening "$port"; do
        if ! kill -0 "$BROKER_PID" 2>/dev/null || [ $waited -ge $((START_TIMEOUT * 10)) ]; then
            log "$broker did not start; its log:"
            tail -n 20 "$logfile" >&2
            stop_broker
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null
    local waited=0
    while kill -0 "$BROKER_PID" 2>/dev/null && [ $waited -lt $((STOP_TIMEOUT * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -KILL "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
    BROKER_PID=
}

# Appends a JSON line for a run that produced none.
record_failure() {
    printf '{"scenario":"%s","label":"%s","mqtt":%s,"qos":%s,"error":"%s"}\n' "$1" "$2" "$3" "$4" "$5" >>"$OUT"
}

# --- setup ------------------------------------------------------------------

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
log "open files limit: $(ulimit -n)"

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_BROKER="taskset -c 0"
    PIN_TOOL="taskset -c 1"
else
    PIN_BROKER=""
    PIN_TOOL=""
    NOTES+=("not pinned: needs taskset and 2 CPUs (have $(nproc))")
fi

log "building tidemq and tidemq-bench (release)"
if ! cargo build --release -q -p tidemq -p tidemq-bench; then
    log "build failed"
    exit 1
fi

for broker in $BROKERS; do
    ensure_peer "$broker"
done

mkdir -p "$(dirname "$OUT")"
: >"$OUT"
RUN_LIMIT=$(( $(duration_secs "$DURATION") + 180 ))

# --- runs -------------------------------------------------------------------

for scenario in $SCENARIOS; do
    qos_levels=$QOS
    [ "$scenario" = conns ] && qos_levels=0 # no messages: QoS does not apply
    for qos in $qos_levels; do
        for mqtt in $MQTT; do
            for broker in $BROKERS; do
                if [ -n "${SKIP_REASON[$broker]:-}" ]; then
                    continue
                fi
                if [ "$broker" = nats ] && { [ "$qos" = 2 ] || [ "$mqtt" = 5 ]; }; then
                    NOTES+=("nats: $scenario qos $qos mqtt $mqtt skipped (nats-server speaks MQTT 3.1.1, QoS 0/1)")
                    continue
                fi
                port=$(broker_port "$broker" "$mqtt")
                log "$scenario qos $qos mqtt $mqtt: $broker on port $port"
                if ! start_broker "$broker" "$port"; then
                    record_failure "$scenario" "$broker" "$mqtt" "$qos" "broker did not start"
                    continue
                fi
                # shellcheck disable=SC2086 # BENCH_ARGS and PIN_TOOL are word lists
                timeout --kill-after=5 "$RUN_LIMIT" $PIN_TOOL "$BENCH" "$scenario" \
                    --port "$port" --qos "$qos" --mqtt "$mqtt" --duration "$DURATION" \
                    --conns "$CONNS" --broker-pid "$BROKER_PID" --label "$broker" --json \
                    $BENCH_ARGS >>"$OUT"
                status=$?
                if [ $status -ge 124 ]; then
                    record_failure "$scenario" "$broker" "$mqtt" "$qos" "tidemq-bench exited with $status"
                fi
                if ! kill -0 "$BROKER_PID" 2>/dev/null; then
                    NOTES+=("$broker exited during $scenario qos $qos mqtt $mqtt; log tail: $(tail -n 2 "$WORK/$broker.log" | tr '\n' ' ')")
                fi
                stop_broker
            done
        done
    done
done

# --- report -----------------------------------------------------------------

echo
echo "tidemq-bench: DURATION=$DURATION QOS=\"$QOS\" MQTT=\"$MQTT\" CONNS=$CONNS ${BENCH_ARGS:+BENCH_ARGS=\"$BENCH_ARGS\"}"
echo "broker pinned with '${PIN_BROKER:-nothing}', load tool with '${PIN_TOOL:-nothing}'; results in $OUT"
echo
"$BENCH" report "$OUT" --baseline tidemq
for broker in "${!SKIP_REASON[@]}"; do
    echo "skipped $broker: ${SKIP_REASON[$broker]}"
done
printf '%s\n' "${NOTES[@]}" | sort -u | sed '/^$/d; s/^/note: /'
