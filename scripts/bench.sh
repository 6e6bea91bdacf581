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
# Every tidemq run gets a fresh data directory of its own under the script's
# temporary directory (TIDEMQ_STORAGE__DIR), removed after the run, so runs
# never see each other's sessions and nothing is written into the repository.
#
# Settings (environment):
#   SCENARIOS   "fanin fanout pairs latency conns"
#   BROKERS     "tidemq mosquitto rumqttd nats"; tidemq variants:
#                 tidemq          the default config (storage on, sync "batch")
#                 tidemq-off      storage disabled (everything in memory)
#                 tidemq-batch    storage on, sync "batch"
#                 tidemq-always   storage on, sync "always"
#                 tidemq-never    storage on, sync "never"
#   STORAGE_FANIN=1              the benchmark of issue 9 in one go: unless set
#                otherwise SCENARIOS=fanin QOS=1 BROKERS="tidemq-off tidemq-batch
#                tidemq-always nats", and BENCH_ARGS gets "--persistent-subscriber
#                --publishers 8 --inflight 100" (a clean session 0 subscriber)
#   BASELINE    the broker the ratios compare with: tidemq, else tidemq-batch,
#               else the first of BROKERS
#   DURATION    10s          how long each run publishes (or holds connections)
#   QOS         "0 1"        QoS levels for the publish/subscribe scenarios
#   MQTT        "4"          MQTT versions: 4 (3.1.1) and/or 5
#   CONNS       10000        connections held by the conns scenario
#   PORT_BASE   21883        first of the six ports used
#   BENCH_ARGS  ""           extra tidemq-bench options, e.g. "--payload 256"
#   OUT         target/bench/results-<time>.jsonl   one JSON object per run
#   SKIP_BUILD=1 use the binaries in target/release as they are
#   TRANSPORT   tcp          one or more of tcp, tls (MQTT over TLS), ws (MQTT
#               over WebSocket), wss (WebSocket over TLS), e.g. "tcp tls":
#               tidemq and mosquitto get the same listener and the same
#               certificates (ECDSA P-256, made with openssl for 127.0.0.1
#               under the temporary directory); runs over tls/ws/wss are
#               labelled broker+transport (tidemq+tls); rumqttd and
#               nats-server run over tcp only
#
# Per run the table gives msg/cpu-s (messages received per broker CPU-second,
# utime+stime from /proc/PID/stat before and after, read by tidemq-bench with
# --broker-pid) and, for tidemq with storage, fsync/s: the store's fsyncs
# during the run (the "store closed ... fsyncs=N" line the broker logs at
# SIGTERM or the storage counters of its "stopped" line, else
# $SYS/broker/tidemq/storage_fsyncs read with mosquitto_sub before and after) over
# the run's time from first publish to last arrival.
set -uo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/broker.sh
. scripts/lib/broker.sh || exit 1

STORAGE_FANIN=${STORAGE_FANIN:-0}
if [ "$STORAGE_FANIN" = 1 ]; then
    SCENARIOS=${SCENARIOS:-fanin}
    BROKERS=${BROKERS:-"tidemq-off tidemq-batch tidemq-always nats"}
    QOS=${QOS:-1}
    BENCH_ARGS="--persistent-subscriber --publishers 8 --inflight 100${BENCH_ARGS:+ $BENCH_ARGS}"
fi
SCENARIOS=${SCENARIOS:-"fanin fanout pairs latency conns"}
BROKERS=${BROKERS:-"tidemq mosquitto rumqttd nats"}
DURATION=${DURATION:-10s}
QOS=${QOS:-"0 1"}
MQTT=${MQTT:-4}
CONNS=${CONNS:-10000}
PORT_BASE=${PORT_BASE:-21883}
BENCH_ARGS=${BENCH_ARGS:-}
OUT=${OUT:-target/bench/results-$(date +%Y%m%d-%H%M%S).jsonl}
SKIP_BUILD=${SKIP_BUILD:-0}
TRANSPORT=${TRANSPORT:-tcp}
CURRENT_TRANSPORT=tcp
if [ -z "${BASELINE:-}" ]; then
    for candidate in tidemq tidemq-batch $BROKERS; do
        case " $BROKERS " in *" $candidate "*) BASELINE=$candidate; break ;; esac
    done
fi
BASELINE=${BASELINE:-tidemq}

RUMQTTD_VERSION=0.20.0
# How long a broker may take to listen after it is started, in seconds.
START_TIMEOUT=15
# How long a broker may take to exit after SIGTERM before SIGKILL, in seconds.
# tidemq flushes and closes its store first.
STOP_TIMEOUT=10
# tidemq publishes its $SYS counters this often during a run, in seconds, so
# that the store's counters read after a run are at most this old.
SYS_INTERVAL=1
# How long to wait for the store's $SYS counters, in seconds.
SYS_WAIT=3
# tidemq's log level in runs: the bench config's "warn", plus the store's
# info lines ("store recovered", "store closed").
TIDEMQ_LOG_LEVEL="warn,tidemq::store=info,tidemq::recovery=info,tidemq::server=info"

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
# Runs started so far; names each tidemq run's data directory.
RUN_NUMBER=0
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
        tidemq|tidemq-off|tidemq-batch|tidemq-always|tidemq-never) return 0 ;;
        tidemq-*) SKIP_REASON[$broker]="unknown tidemq variant (known: tidemq tidemq-off tidemq-batch tidemq-always tidemq-never)" ;;
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

# A CA and a certificate for 127.0.0.1 signed by it, under $WORK/tls.
make_certificates() {
    local dir=$WORK/tls
    mkdir -p "$dir"
    # mosquitto reads them after dropping to its own user.
    chmod 755 "$WORK" "$dir"
    # ECDSA P-256: what a deployment picks today, and a cheap handshake.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=tidemq bench CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1 || return 1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1 || return 1
    printf 'subjectAltName=IP:127.0.0.1\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.pem" >/dev/null 2>&1 || return 1
    chmod 644 "$dir"/*
}

# The listener lines of a broker's config for CURRENT_TRANSPORT.
listener_lines() {
    local dir=$WORK/tls
    case $1:$CURRENT_TRANSPORT in
        *:tcp) ;;
        tidemq:tls) echo "tls = { cert = \"$dir/server.pem\", key = \"$dir/server.key\" }" ;;
        tidemq:ws) echo 'protocol = "ws"' ;;
        tidemq:wss) printf '%s\n' 'protocol = "ws"' "tls = { cert = \"$dir/server.pem\", key = \"$dir/server.key\" }" ;;
        mosquitto:tls) printf '%s\n' "certfile $dir/server.pem" "keyfile $dir/server.key" ;;
        # Debian's mosquitto 2.0.11 may fail to start a websockets
        # listener ("Unable to start any listening sockets"); the run then
        # says "broker did not start".
        mosquitto:ws) echo 'protocol websockets' ;;
        mosquitto:wss) printf '%s\n' 'protocol websockets' "certfile $dir/server.pem" "keyfile $dir/server.key" ;;
    esac
}

# Fills in a config template from configs/bench/.
render_config() {
    local template=$1 out=$2 lines
    lines=$(listener_lines "${template%%.*}" | sed 's/[&|]/\\&/g' | sed ':a;N;$!ba;s/\n/\\n/g')
    sed -e "s|@PORT@|$3|g" -e "s|@LISTENER@|$lines|g" -e "s|@PORT4@|$PORT_RUMQTTD_V4|g" -e "s|@PORT5@|$PORT_RUMQTTD_V5|g" \
        -e "s|@CLIENT_PORT@|$PORT_NATS_CLIENT|g" -e "s|@STORE_DIR@|$WORK/nats-js|g" \
        "configs/bench/$template" >"$out"
}

# The MQTT port of a broker for an MQTT version.
broker_port() {
    case $1 in
        tidemq*) echo "$PORT_TIDEMQ" ;;
        mosquitto) echo "$PORT_MOSQUITTO" ;;
        rumqttd) if [ "$2" = 5 ]; then echo "$PORT_RUMQTTD_V5"; else echo "$PORT_RUMQTTD_V4"; fi ;;
        nats) echo "$PORT_NATS_MQTT" ;;
    esac
}

# The storage settings of a tidemq variant, as environment overrides.
tidemq_storage_env() {
    case $1 in
        tidemq) ;; # the default config
        tidemq-off) echo TIDEMQ_STORAGE__ENABLED=false ;;
        tidemq-*) echo TIDEMQ_STORAGE__ENABLED=true "TIDEMQ_STORAGE__SYNC=${1#tidemq-}" ;;
    esac
}

# Whether a broker of this name keeps a store whose counters are read.
has_store() {
    case $1 in tidemq|tidemq-batch|tidemq-always|tidemq-never) return 0 ;; *) return 1 ;; esac
}

# The data directory of the current tidemq run.
data_dir() {
    echo "$WORK/data-$RUN_NUMBER"
}

# Starts a broker pinned to CPU 0; sets BROKER_PID. Fails if it does not
# listen within START_TIMEOUT.
start_broker() {
    local broker=$1 port=$2 logfile="$WORK/$1.log"
    RUN_NUMBER=$((RUN_NUMBER + 1))
    case $broker in
        tidemq*)
            render_config tidemq.toml "$WORK/tidemq.toml" "$PORT_TIDEMQ"
            rm -rf "$(data_dir)"
            # shellcheck disable=SC2046 # the storage settings are a word list
            env TIDEMQ_STORAGE__DIR="$(data_dir)" TIDEMQ_SYS__INTERVAL_SECS=$SYS_INTERVAL \
                TIDEMQ_LOG__LEVEL="$TIDEMQ_LOG_LEVEL" $(tidemq_storage_env "$broker") \
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
    if ! wait_listening "$port" "$broker" "$logfile"; then
        stop_broker
        return 1
    fi
}

# "FSYNCS COMMITS" from the store's retained $SYS counters (COMMITS may be
# "-"), or nothing when the broker has none within SYS_WAIT seconds. Builds
# before issue 11 published them without the tidemq/ level: both are asked
# for, only one pair exists.
sys_storage_counters() {
    command -v mosquitto_sub >/dev/null || return 0
    timeout $((SYS_WAIT + 2)) mosquitto_sub -h 127.0.0.1 -p "$1" -C 2 -W "$SYS_WAIT" -v \
        -t '$SYS/broker/tidemq/storage_fsyncs' -t '$SYS/broker/tidemq/storage_commits' \
        -t '$SYS/broker/storage_fsyncs' -t '$SYS/broker/storage_commits' 2>/dev/null |
        awk '$1 ~ /storage_fsyncs$/ {f = $2} $1 ~ /storage_commits$/ {c = $2}
             END {if (f ~ /^[0-9]+$/) print f, (c ~ /^[0-9]+$/ ? c : "-")}'
}

# "FSYNCS COMMITS" from a stopped tidemq's log: its "store closed" line,
# else the storage counters of its "stopped metrics=..." line.
closed_storage_counters() {
    local plain
    plain=$(sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null)
    local closed
    closed=$(grep 'store closed' <<<"$plain" | tail -n 1 |
        sed -n 's/.*fsyncs=\([0-9]*\).*commits=\([0-9]*\).*/\1 \2/p')
    if [ -n "$closed" ]; then
        echo "$closed"
        return
    fi
    grep ' stopped ' <<<"$plain" | tail -n 1 |
        sed -n 's/.*storage_commits: \([0-9]*\).*storage_fsyncs: \([0-9]*\).*/\2 \1/p'
}

# Adds the store's counters to a run's JSON line: the "store closed" totals
# when the log has them, else the difference of the $SYS counters.
add_storage_counters() {
    local json=$1 logfile=$2 before=$3 after=$4 fsyncs= commits=
    read -r fsyncs commits <<<"$(closed_storage_counters "$logfile")"
    if [ -z "$fsyncs" ] && [ -n "$before" ] && [ -n "$after" ]; then
        local f0 c0 f1 c1
        read -r f0 c0 <<<"$before"
        read -r f1 c1 <<<"$after"
        fsyncs=$((f1 - f0))
        commits=-
        if [ "$c0" != - ] && [ "$c1" != - ]; then commits=$((c1 - c0)); fi
    fi
    [ -n "$fsyncs" ] || return 0
    local fields="\"storage_fsyncs\":$fsyncs,"
    [ -n "$commits" ] && [ "$commits" != - ] && fields+="\"storage_commits\":$commits,"
    sed -i "s/^{/{$fields/" "$json"
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

if ! build_binaries; then
    log "build failed"
    exit 1
fi

for broker in $BROKERS; do
    ensure_peer "$broker"
done

for transport in $TRANSPORT; do
    case $transport in
        tcp|ws) ;;
        tls|wss)
            if [ ! -f "$WORK/tls/ca.pem" ] && ! make_certificates; then
                log "openssl could not make the certificates"
                exit 1
            fi
            ;;
        *) log "unknown TRANSPORT $transport (tcp, tls, ws, wss)"; exit 1 ;;
    esac
done

# The load tool's options for a transport.
transport_args() {
    case $1 in
        tcp) ;;
        tls) echo "--tls --tls-ca $WORK/tls/ca.pem" ;;
        ws) echo "--ws" ;;
        wss) echo "--ws --tls --tls-ca $WORK/tls/ca.pem" ;;
    esac
}

mkdir -p "$(dirname "$OUT")"
: >"$OUT"
RUN_LIMIT=$(( $(duration_secs "$DURATION") + 180 ))

# --- runs -------------------------------------------------------------------

for scenario in $SCENARIOS; do
  for CURRENT_TRANSPORT in $TRANSPORT; do
    suffix=
    [ "$CURRENT_TRANSPORT" = tcp ] || suffix="+$CURRENT_TRANSPORT"
    qos_levels=$QOS
    [ "$scenario" = conns ] && qos_levels=0 # no messages: QoS does not apply
    for qos in $qos_levels; do
        for mqtt in $MQTT; do
            for broker in $BROKERS; do
                if [ -n "${SKIP_REASON[$broker]:-}" ]; then
                    continue
                fi
                case $broker:$CURRENT_TRANSPORT in
                    rumqttd:tcp|nats:tcp) ;;
                    rumqttd:*|nats:*)
                        NOTES+=("$broker: $CURRENT_TRANSPORT skipped (run against tidemq and mosquitto only)")
                        continue ;;
                esac
                label=$broker$suffix
                if [ "$broker" = nats ] && { [ "$qos" = 2 ] || [ "$mqtt" = 5 ]; }; then
                    NOTES+=("nats: $scenario qos $qos mqtt $mqtt skipped (nats-server speaks MQTT 3.1.1, QoS 0/1)")
                    continue
                fi
                port=$(broker_port "$broker" "$mqtt")
                log "$scenario qos $qos mqtt $mqtt: $label on port $port"
                if ! start_broker "$broker" "$port"; then
                    record_failure "$scenario" "$label" "$mqtt" "$qos" "broker did not start"
                    continue
                fi
                counters_before=
                if has_store "$broker"; then
                    counters_before=$(sys_storage_counters "$port")
                fi
                # shellcheck disable=SC2086 # BENCH_ARGS and PIN_TOOL are word lists
                timeout --kill-after=5 "$RUN_LIMIT" $PIN_TOOL "$BENCH" "$scenario" \
                    --port "$port" --qos "$qos" --mqtt "$mqtt" --duration "$DURATION" \
                    --conns "$CONNS" --broker-pid "$BROKER_PID" --label "$label" --json \
                    $(transport_args "$CURRENT_TRANSPORT") $BENCH_ARGS >"$WORK/run.json"
                status=$?
                counters_after=
                if [ -n "$counters_before" ]; then
                    sleep "$SYS_INTERVAL" # the counters of the run's last moments
                    counters_after=$(sys_storage_counters "$port")
                fi
                if ! kill -0 "$BROKER_PID" 2>/dev/null; then
                    NOTES+=("$broker exited during $scenario qos $qos mqtt $mqtt; log tail: $(tail -n 2 "$WORK/$broker.log" | tr '\n' ' ')")
                fi
                stop_broker
                if has_store "$broker"; then
                    add_storage_counters "$WORK/run.json" "$WORK/$broker.log" "$counters_before" "$counters_after"
                fi
                cat "$WORK/run.json" >>"$OUT"
                if [ $status -ge 124 ]; then
                    record_failure "$scenario" "$label" "$mqtt" "$qos" "tidemq-bench exited with $status"
                fi
                case $broker in tidemq*) rm -rf "$(data_dir)" ;; esac
            done
        done
    done
  done
done

# --- report -----------------------------------------------------------------

echo
echo "tidemq-bench: TRANSPORT=$TRANSPORT DURATION=$DURATION QOS=\"$QOS\" MQTT=\"$MQTT\" CONNS=$CONNS ${BENCH_ARGS:+BENCH_ARGS=\"$BENCH_ARGS\"}"
echo "broker pinned with '${PIN_BROKER:-nothing}', load tool with '${PIN_TOOL:-nothing}'; results in $OUT"
echo "msg/cpu-s: messages received per broker CPU-second (utime+stime over the run);" \
    "fsync/s: the tidemq store's fsyncs per second of the run (\"-\": no store, or none reported)"
echo
"$BENCH" report "$OUT" --baseline "$BASELINE"
for broker in "${!SKIP_REASON[@]}"; do
    echo "skipped $broker: ${SKIP_REASON[$broker]}"
done
printf '%s\n' "${NOTES[@]}" | sort -u | sed '/^$/d; s/^/note: /'
