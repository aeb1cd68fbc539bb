#!/usr/bin/env bash
# Proxy throughput: SIPp UAC at rising rates through hapbx to two SIPp UAS
# backends (balance routing), and side by side in the same run SIPp UAC
# straight to a SIPp UAS. For each rate: calls attempted, succeeded, failed,
# and hapbx CPU seconds per 1000 calls (from /proc utime+stime).
# Loopback only; every run is bounded by a call count and a timeout.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${HAPBX_BIN:-bin/hapbx}
SCEN=$PWD/proxy/testdata
BENCHDIR=$PWD/deploy/bench
RATES=${RATES:-"500 1000 2000 3000 4000"}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-6}
PROXY=127.0.8.1 BE1=127.0.8.11 BE2=127.0.8.12 DIRECT=127.0.8.13 PHONE=127.0.8.50

command -v sipp >/dev/null || { echo "bench: sipp missing (apt-get install sip-tester)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

uas() { (cd "$work" && exec sipp -i "$1" -p 5060 -sf "$BENCHDIR/uas_bench.xml" -nostdin -max_socket 60000 >/dev/null 2>&1) & pids+=($!); }
uas "$BE1"; uas "$BE2"; uas "$DIRECT"

cat >"$work/hapbx.yaml" <<YAML
node: {name: bench}
sip: {listen: ["udp://$PROXY:5060"], advertise: $PROXY}
backends:
  - {name: asterisk1, address: "$BE1:5060", transport: udp}
  - {name: asterisk2, address: "$BE2:5060", transport: udp}
routing: balance
registrar: {data_dir: "$work/data"}
admin: {listen: "127.0.0.1:19068"}
log: {level: error, format: json}
# One SIPp address stands in for a whole office: the flood guard would
# (rightly) block one source at these rates. Its own cost per request is
# BenchmarkGuardAllow/BenchmarkUDPDoor (proxy, proxy/limits).
limits: {flood: {rate: 0}}
YAML
"$BIN" run -c "$work/hapbx.yaml" 2>"$work/hapbx.log" & hpid=$!; pids+=($hpid)
# Ready when health has both backends up (rise: two probes each).
for _ in $(seq 100); do
  [ "$(curl -fs http://127.0.0.1:19068/api/v1/status 2>/dev/null | grep -c '"state": "up"')" = 2 ] && break; sleep 0.1
done
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{printf "%.3f", ($14+$15)/t}' /proc/$hpid/stat; }

run() { # target rate -> "attempted ok failed"
  local n=$(( $2 * SECONDS_PER_RATE ))
  local out; out=$(cd "$work" && sipp -i "$PHONE" -p 5070 -sf "$SCEN/uac_call.xml" -s 202 -m "$n" -r "$2" \
     -l $(( $2 * 2 )) -timeout $(( SECONDS_PER_RATE * 4 ))s -nostdin -max_socket 60000 "$1" 2>&1 || true)
  local ok failed
  ok=$(grep -E 'Successful call' <<<"$out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep -E 'Failed call' <<<"$out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  echo "$n ${ok:-0} ${failed:-0}"
}

echo "proxy benchmark on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "each rate runs ${SECONDS_PER_RATE}s of calls (INVITE/180/200/ACK/BYE/200, 200 ms call length)"
printf '%6s | %-28s | %-28s | %s\n' "rate" "through hapbx: sent ok fail" "direct to UAS: sent ok fail" "hapbx CPU-s/1000 calls"
for r in $RATES; do
  c0=$(cpu); read -r a1 s1 f1 < <(run "$PROXY:5060" "$r"); c1=$(cpu)
  read -r a2 s2 f2 < <(run "$DIRECT:5060" "$r")
  per=$(awk -v a="$c0" -v b="$c1" -v n="$s1" 'BEGIN{ if (n>0) printf "%.3f", (b-a)/n*1000; else print "-" }')
  printf '%6s | %8s %8s %8s   | %8s %8s %8s   | %s\n' "$r" "$a1" "$s1" "$f1" "$a2" "$s2" "$f2" "$per"
done
