#!/usr/bin/env bash
# Under load and abuse (issue 13): hapbx between SIPp phones and a SIPp
# backend, one fresh hapbx per part, its peak RSS (VmHWM) and the figures
# each part is about:
#   a        a flood of FLOOD_RATE calls/s offered for FLOOD_SECONDS from one
#            address, default limits (the flood guard blocks that address),
#            then AFTER_RATE calls/s from other phones: time until they all
#            succeed again, backend state changes caused
#   a-noguard  the same with limits.flood.rate 0: the memory budget and
#            max_transactions are what sheds the flood
#   b        REG_N phones register once each at REG_RATE/s with
#            max_bindings MAX_BINDINGS: how many got 200, how many bindings
#            hapbx holds (they must be equal)
#   c        HOLD_RATE calls/s held HOLD_SECONDS each (10 000 up at once):
#            RSS while they are all up
# PARTS picks the parts ("a a-noguard b c"); SCALE multiplies every rate,
# count and max_bindings (SCALE=0.1 to try the script). PROFILE=1 saves a
# heap and a goroutine profile of hapbx in each part's directory (with
# KEEP=1 to keep them): at the end of a and b, while every call is up in
# c, and during the storm in b (PROFILE_AT seconds into it, "35"). Loopback only
# (127.0.9.x); every SIPp run is bounded by a call count and a timeout.
# In b and c all phones send from one address, so the flood guard is off
# there (it would rightly block 4000 REGISTERs/s from one address).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${HAPBX_BIN:-bin/hapbx}
SCEN=$PWD/proxy/testdata
BENCHDIR=$PWD/deploy/bench
PARTS=${PARTS:-"a a-noguard b c"}
SCALE=${SCALE:-1}
sc() { awk -v v="$1" -v s="$SCALE" 'BEGIN{ n = int(v * s + 0.5); print (n < 1 ? 1 : n) }'; }
FLOOD_RATE=$(sc "${FLOOD_RATE:-8000}") FLOOD_SECONDS=${FLOOD_SECONDS:-10}
AFTER_RATE=$(sc "${AFTER_RATE:-200}") AFTER_SECONDS=${AFTER_SECONDS:-40}
REG_N=$(sc "${REG_N:-200000}") REG_RATE=$(sc "${REG_RATE:-4000}") MAX_BINDINGS=$(sc "${MAX_BINDINGS:-100000}")
HOLD_RATE=$(sc "${HOLD_RATE:-500}") HOLD_SECONDS=${HOLD_SECONDS:-20} HOLD_CREATE_SECONDS=${HOLD_CREATE_SECONDS:-30}
# BENCH_NET and BENCH_ADMIN_PORT move the bench off 127.0.9.x and 19070
# (two runs at once).
NET=${BENCH_NET:-127.0.9}
PROXY=$NET.1 BE=$NET.11 FLOODER=$NET.60 PHONE=$NET.50 ADMIN=127.0.0.1:${BENCH_ADMIN_PORT:-19070}

command -v sipp >/dev/null || { echo "bench: sipp missing (apt-get install sip-tester)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $work" || rm -rf "$work"; }
trap cleanup EXIT INT TERM

hpid='' uaspid='' samplerpid=''
# lim LIMITS_YAML: a part's limits with EXTRA_LIMITS ("max_transactions:
# 5000", to try another setting) added.
lim() { if [ -z "${EXTRA_LIMITS:-}" ]; then echo "$1"; elif [ "$1" = "{}" ]; then echo "{$EXTRA_LIMITS}"; else echo "{$EXTRA_LIMITS, ${1#\{}"; fi; }
(umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token")
# heap PART [NAME]: hapbx's heap profile (live objects at the last
# collection) into the part's directory as NAME (heap) .pprof, with its
# goroutine profile as NAME-goroutine.pprof, when PROFILE is set.
heap() { [ -z "${PROFILE:-}" ] && return; local n=${2:-heap} auth="Authorization: Bearer $(cat "$work/token")"
  curl -fs -H "$auth" "http://$ADMIN/debug/pprof/heap?gc=1" -o "$work/$1/$n.pprof" || echo "bench: no heap profile" >&2
  curl -fs -H "$auth" "http://$ADMIN/debug/pprof/goroutine" -o "$work/$1/$n-goroutine.pprof" || echo "bench: no goroutine profile" >&2; }
# start PART LIMITS_YAML REGISTRAR_EXTRA: a SIPp backend (answering calls,
# REGISTERs and probes) and a fresh hapbx, ready when the backend is up.
start() {
  local dir=$work/$1; mkdir -p "$dir"
  (cd "$dir" && exec sipp -i "$BE" -p 5060 -sf "$BENCHDIR/$4" -nostdin -max_socket 60000 >/dev/null 2>&1) & uaspid=$!; pids+=($uaspid)
  cat >"$dir/hapbx.yaml" <<YAML
node: {name: loadbench}
sip: {listen: ["udp://$PROXY:5060"], advertise: $PROXY}
backends: [{name: asterisk1, address: "$BE:5060", transport: udp}]
registrar: {data_dir: "$dir/data"$3}
limits: $(lim "$2")
admin: {listen: "$ADMIN"$( [ -z "${PROFILE:-}" ] || echo ", token_file: \"$work/token\", pprof: true")}
log: {level: warn, format: json}
YAML
  "$BIN" run -c "$dir/hapbx.yaml" 2>"$dir/hapbx.log" & hpid=$!; pids+=($hpid)
  for _ in $(seq 150); do
    curl -fs "http://$ADMIN/api/v1/status" 2>/dev/null | grep -q '"state": "up"' && break; sleep 0.1
  done
  curl -fs "http://$ADMIN/api/v1/status" | grep -q '"state": "up"' || { echo "bench: hapbx or its backend did not come up" >&2; cat "$dir/hapbx.log" >&2; exit 1; }
  # RSS every 100 ms: "seconds-since-epoch VmRSS RssAnon RssFile" in KB
  # (RssFile: the registrar's store file mapped in memory).
  (while [ -r "/proc/$hpid/status" ]; do
     echo "$(date +%s.%N) $(awk '/^(VmRSS|RssAnon|RssFile)/ {printf "%s ", $2}' "/proc/$hpid/status" 2>/dev/null)"; sleep 0.1
   done >"$dir/rss") & samplerpid=$!; pids+=($samplerpid)
}
stop() { kill "$samplerpid" "$hpid" "$uaspid" 2>/dev/null || true; wait "$hpid" "$uaspid" "$samplerpid" 2>/dev/null || true; }
peak_mb() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$hpid/status"; }
# peak: VmHWM, and the most anonymous memory sampled (the rest is mapped files).
peak() { printf '%s MB (anonymous memory at most %s MB)' "$(peak_mb)" "$(awk '$3 > m {m = $3} END {printf "%.0f", m / 1024}' "$work/$1/rss")"; }
# metric NAME: the sum of a metric's series on hapbx's /metrics.
metric() { curl -fs "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $NF} END {printf "%d", s}'; }
shed() { curl -fs "http://$ADMIN/metrics" | awk '/^hapbx_proxy_shed_total\{/ {match($1, /reason="[^"]*"/); r = substr($1, RSTART + 8, RLENGTH - 9); printf "%s%s %d", sep, r, $NF; sep = ", "}'; }
# transitions: hapbx_health_transitions_total by from->to, "up->suspect 3, ...".
transitions() { curl -fs "http://$ADMIN/metrics" | awk '/^hapbx_health_transitions_total\{/ {match($1, /from="[^"]*"/); f = substr($1, RSTART + 6, RLENGTH - 7)
  match($1, /to="[^"]*"/); t = substr($1, RSTART + 4, RLENGTH - 5); printf "%s%s->%s %d", sep, f, t, $NF; sep = ", "}'; }
# metric_with NAME LABEL...: the sum of a metric's series whose labels
# include every LABEL (written name="value").
metric_with() { local m=$1; shift; curl -fs "http://$ADMIN/metrics" | awk -v m="$m" -v want="$*" '
  index($1, m "{") == 1 {n = split(want, w, " "); for (i = 1; i <= n; i++) if (index($1, w[i]) == 0) next; s += $NF} END {printf "%d", s}'; }
# udp_drops: datagrams the kernel dropped for lack of receive buffer in
# this network namespace (any socket: hapbx's, SIPp's, other programs').
udp_drops() { awk '/^Udp:/ {if (!k) {for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") k = i; next} print $k; exit}' /proc/net/snmp; }
# sock_hex IP PORT: the address as /proc/net/udp writes it.
sock_hex() { printf '%02X%02X%02X%02X:%04X' $(echo "$1" | awk -F. '{print $4, $3, $2, $1}') "$2"; }
# watch_drops FILE: /proc/net/udp's rows of the bench's sockets every
# 200 ms into FILE (a socket's drop count goes with the socket);
# sock_drops FILE IP PORT: the most datagrams dropped at that socket for
# want of receive buffer.
watch_drops() { local re; re="$(sock_hex "$PHONE" 5070)|$(sock_hex "$PROXY" 5060)|$(sock_hex "$BE" 5060)"
  (while :; do grep -E " ($re) " /proc/net/udp; sleep 0.2; done >"$1") & pids+=($!); dropspid=$!; }
sock_drops() { awk -v a="$(sock_hex "$2" "$3")" '$2 == a && $NF + 0 > m {m = $NF + 0} END {print m + 0}' "$1"; }
# watch_memory FILE: every second, seconds since the start and hapbx's
# memory figures in MiB (RSS, the door's estimate it sheds on: heap goal
# plus stacks, the live state, heap in use, goroutine stacks, the next
# collection's goal), GOGC, goroutines,
# pending transactions and whether it sheds.
watch_memory() { local t0; t0=$(date +%s.%N)
  echo "s rss peak live heap_inuse stacks next_gc gogc goroutines pending shedding" >"$1"
  (while m=$(curl -fs "http://$ADMIN/metrics"); do echo "$m" | awk -v t="$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b - a}')" '
     {v[$1] = $NF} END {m = 1048576; printf "%s %.0f %.0f %.0f %.0f %.0f %.0f %s %s %s %s\n", t, v["process_resident_memory_bytes"] / m,
       v["hapbx_limits_memory_peak_bytes"] / m, v["hapbx_limits_memory_in_use_bytes"] / m, v["go_memstats_heap_inuse_bytes"] / m, v["go_memstats_stack_inuse_bytes"] / m,
       v["go_memstats_next_gc_bytes"] / m, v["hapbx_limits_gc_percent"], v["go_goroutines"], v["hapbx_proxy_transactions_in_flight"], v["hapbx_limits_shedding"]}' >>"$1"
     sleep 1; done) & pids+=($!); }
bindings() { curl -fs "http://$ADMIN/api/v1/status" | awk -F': ' '/"bindings"/ {gsub(/,/, "", $2); print $2; exit}'; }
# stat FILE COLUMN: a column of the last line of a SIPp -trace_stat file.
stat() { awk -F';' -v c="$2" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == c) k = i} END {print $k + 0}' "$1"; }
statmax() { awk -F';' -v c="$2" 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == c) k = i; next} $k + 0 > m {m = $k + 0} END {print m + 0}' "$1"; }
# sipp_uac DIR ADDR ARGS...: a SIPp phone run from DIR, statistics every
# second in DIR/stat.csv; killed after $KILL_AFTER seconds when set (SIPp's
# own -timeout waits for the calls under way: a flood's unanswered INVITEs
# would go on being retransmitted for 32 s).
sipp_uac() { local dir=$1 addr=$2; shift 2; mkdir -p "$dir"
  (cd "$dir" && timeout -s KILL "${KILL_AFTER:-600}" sipp -i "$addr" -p 5070 -nostdin -max_socket 60000 \
     -trace_stat -stf stat.csv -fd 1 "$@" "$PROXY:5060" >out.txt 2>&1 || true) 2>/dev/null; }

echo "hapbx under load and abuse on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "SIPp phones -> hapbx (UDP, $PROXY) -> one SIPp backend; one fresh hapbx per part; peak RSS is its VmHWM"

flood() { # $1: part name, $2: limits
  local dir=$work/$1
  start "$1" "$2" "" uas_bench.xml
  local tr0; tr0=$(metric hapbx_health_transitions_total)
  KILL_AFTER=$(( FLOOD_SECONDS + 1 )) sipp_uac "$dir/flood" "$FLOODER" -sf "$SCEN/uac_call.xml" -s 202 -r "$FLOOD_RATE" -m $(( FLOOD_RATE * FLOOD_SECONDS )) \
    -l $(( FLOOD_RATE * FLOOD_SECONDS )) -timeout "${FLOOD_SECONDS}s"
  local fpeak; fpeak=$(peak_mb)
  # Right after the flood: AFTER_RATE calls/s from another phone, each call's
  # start time (answer time less its response time) from SIPp's -trace_rtt.
  sipp_uac "$dir/after" "$PHONE" -sf "$SCEN/uac_call.xml" -s 202 -r "$AFTER_RATE" -m $(( AFTER_RATE * AFTER_SECONDS )) \
    -timeout $(( AFTER_SECONDS + 40 ))s -trace_rtt -rtt_freq 1
  sleep 1
  local tr1; tr1=$(metric hapbx_health_transitions_total)
  local f=$dir/flood/stat.csv a=$dir/after/stat.csv
  local sent ok failed el
  sent=$(stat "$f" 'OutgoingCall(C)') ok=$(stat "$f" 'SuccessfulCall(C)') failed=$(stat "$f" 'FailedCall(C)')
  el=$(awk -F';' 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "ElapsedTime(C)") k = i} END {split($k, t, ":"); print t[1] * 3600 + t[2] * 60 + t[3]}' "$f")
  # Recovery: the start of the first second (counted from the start of
  # these calls, right after the flood) from which every later second's
  # calls succeeded: at least 99% of AFTER_RATE less one (SIPp's pacing puts
  # a call more or less on either side of a second's edge).
  local rec; rec=$( (cat "$dir"/after/*_rtt.csv 2>/dev/null || true) | awk -F';' -v r="$AFTER_RATE" -v n="$AFTER_SECONDS" '
    $1 + 0 > 0 {c[int(($1 - $2) / 1000)]++}
    END {rec = "never"
         for (k = n - 2; k >= 0; k--) { if (c[k] + 0 >= 0.99 * r - 1) rec = k; else break }
         line = ""; for (k = 0; k < n; k++) line = line " " (c[k] + 0)
         print rec "|" line}')
  local aok afail; aok=$(stat "$a" 'SuccessfulCall(C)') afail=$(stat "$a" 'FailedCall(C)')
  printf '%s: flood %s calls/s for %ss from %s, limits %s\n' "$1" "$FLOOD_RATE" "$FLOOD_SECONDS" "$FLOODER" "$(lim "$2")"
  printf '  SIPp offered %s calls in %ss (%s calls/s); answered 200: %s, failed (503 or other): %s, no answer when it stopped: %s\n' \
    "$sent" "$el" "$(awk -v s="$sent" -v e="$el" 'BEGIN{ printf "%.0f", (e > 0 ? s / e : 0) }')" "$ok" "$failed" "$(( sent - ok - failed ))"
  printf '  peak RSS during the flood %s MB (goal < 512 MiB); shed: %s\n' "$fpeak" "$(shed)"
  printf '  then %s calls/s for %ss: %s ok, %s failed; successful calls by second of start:%s\n' "$AFTER_RATE" "$AFTER_SECONDS" "$aok" "$afail" "${rec#*|}"
  printf '  all calls succeed again from second %s after the flood (goal < 2 s)\n' "${rec%%|*}"
  printf '  backend state changes: %s (goal 0; since the start: %s); peak RSS overall %s\n' "$(( tr1 - tr0 ))" "$(transitions)" "$(peak "$1")"
  heap "$1"
  stop
}

registrations() {
  local dir=$work/b
  start b "{flood: {rate: 0}}" ", max_bindings: $MAX_BINDINGS" uas_register_ok.xml
  local t0 t1 drops0 dropspid; t0=$(date +%s.%N) drops0=$(udp_drops)
  watch_drops "$dir/udp"
  # PROFILE_AT: seconds into the storm for profiles taken during it (a
  # list: "20 35"); hapbx's memory figures every second into b/memory.
  [ -z "${PROFILE:-}" ] || { for at in ${PROFILE_AT:-35}; do (sleep "$at"; heap b "storm-$at") & pids+=($!); done; watch_memory "$dir/memory"; }
  sipp_uac "$dir/phones" "$PHONE" -sf "$BENCHDIR/uac_register_many.xml" -r "$REG_RATE" -m "$REG_N" \
    -l "$REG_N" -timeout $(( REG_N / REG_RATE * 3 + 40 ))s
  t1=$(date +%s.%N); sleep 1; kill "$dropspid" 2>/dev/null || true
  # 200s and bindings are read once hapbx has nothing pending (up to 40 s):
  # read while it still answers, they are read at different moments.
  for _ in $(seq 400); do [ "$(metric hapbx_proxy_transactions_in_flight)" = 0 ] && break; sleep 0.1; done
  # When SIPp had sent the last REGISTER (the rest is waiting for answers).
  local sentin; sentin=$(awk -F';' -v n="$REG_N" 'NR == 1 {for (i = 1; i <= NF; i++) {if ($i == "OutgoingCall(C)") k = i; if ($i == "ElapsedTime(C)") e = i}; next}
    $k + 0 >= n && d == "" {split($e, t, ":"); d = t[1] * 3600 + t[2] * 60 + t[3]} END {print (d == "" ? "?" : d)}' "$dir/phones/stat.csv")
  local s=$dir/phones/stat.csv
  local sent ok refused lost held sent200 drops; sent=$(stat "$s" 'OutgoingCall(C)') ok=$(stat "$s" 'SuccessfulCall(C)') held=$(bindings)
  sent200=$(metric_with hapbx_proxy_responses_total 'method="REGISTER"' 'code="200"') drops=$(( $(udp_drops) - drops0 ))
  refused=$(stat "$s" 'FailedUnexpectedMessage(C)') lost=$(stat "$s" 'FailedMaxUDPRetrans(C)')
  printf 'b: %s phones register once each at %s/s, max_bindings %s, limits %s\n' "$REG_N" "$REG_RATE" "$MAX_BINDINGS" "$(lim '{flood: {rate: 0}}')"
  printf '  sent %s (the last after %ss) in %.1fs; 200: %s, refused (503): %s, unanswered: %s; bindings held: %s (goal: 200s = bindings held)\n' \
    "$sent" "$sentin" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" "$ok" "$refused" "$lost" "$held"
  # A phone whose 200 was lost retransmits; one that reaches hapbx after
  # its transaction ended (Timer J) is a new one: forwarded again, its
  # binding refreshed and a second 200 sent. So: 200s = bindings added +
  # refreshed + answered from the store.
  printf '  hapbx sent %s 200s to REGISTERs: bindings added %s, refreshed %s, answered from the store %s\n' "$sent200" \
    "$(metric_with hapbx_registrar_changes_total 'op="add"')" "$(metric_with hapbx_registrar_changes_total 'op="refresh"')" "$(metric hapbx_proxy_register_store_answers_total)"
  printf '  UDP datagrams dropped for want of receive buffer: %s at the phones, %s at hapbx, %s at the backend (%s on the host)\n' \
    "$(sock_drops "$dir/udp" "$PHONE" 5070)" "$(sock_drops "$dir/udp" "$PROXY" 5060)" "$(sock_drops "$dir/udp" "$BE" 5060)" "$drops"
  printf '  peak RSS %s (goal < 512 MiB); shed: %s; stray final responses forwarded statelessly: %s\n' "$(peak b)" "$(shed)" \
    "$(metric_with hapbx_proxy_stray_responses_total 'outcome="forwarded"')"
  heap b
  stop
}

held_calls() {
  local dir=$work/c
  start c "{flood: {rate: 0}}" "" uas_bench.xml
  local n=$(( HOLD_RATE * HOLD_CREATE_SECONDS )) t0; t0=$(date +%s.%N)
  (sleep $(( HOLD_SECONDS + 5 )); heap c) &
  sipp_uac "$dir/phones" "$PHONE" -sf "$BENCHDIR/uac_call_hold.xml" -s 202 -d $(( HOLD_SECONDS * 1000 )) -r "$HOLD_RATE" -m "$n" \
    -l "$n" -timeout $(( HOLD_CREATE_SECONDS + HOLD_SECONDS + 40 ))s
  sleep 1
  local s=$dir/phones/stat.csv
  # RSS while all calls are up: samples from HOLD_SECONDS + 1 after the
  # start until the last call was placed.
  local plateau; plateau=$(awk -v a="$t0" -v lo="$(( HOLD_SECONDS + 1 ))" -v hi="$HOLD_CREATE_SECONDS" \
    '$1 - a >= lo && $1 - a <= hi && $2 > m {m = $2} END {printf "%.0f", m / 1024}' "$dir/rss")
  printf 'c: %s calls/s held %ss each, %s calls placed over %ss, flood guard off\n' "$HOLD_RATE" "$HOLD_SECONDS" "$n" "$HOLD_CREATE_SECONDS"
  printf '  up at once (SIPp, most): %s; 200: %s, failed: %s\n' "$(statmax "$s" CurrentCall)" "$(stat "$s" 'SuccessfulCall(C)')" "$(stat "$s" 'FailedCall(C)')"
  printf '  RSS with all calls up %s MB (goal <= 200 MB); peak RSS %s; shed: %s\n' "$plateau" "$(peak c)" "$(shed)"
  stop
}

for p in $PARTS; do
  case $p in
    a) flood a "{}" ;;
    a-noguard) flood a-noguard "{flood: {rate: 0}}" ;;
    b) registrations ;;
    c) held_calls ;;
    *) echo "bench: unknown part $p (a, a-noguard, b, c)" >&2; exit 2 ;;
  esac
done
