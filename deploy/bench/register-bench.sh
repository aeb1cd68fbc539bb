#!/usr/bin/env bash
# Registration storm: SIPp registers N distinct phones through hapbx at a
# bounded rate to a SIPp backend that accepts them; prints how many were
# answered, how many bindings hapbx holds afterwards, and hapbx CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${HAPBX_BIN:-bin/hapbx}
N=${N:-10000} RATE=${RATE:-1000}
PROXY=127.0.7.1 BE=127.0.7.11 PHONES=127.0.7.50
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
(cd "$work" && exec sipp -i "$BE" -p 5060 -sf "$OLDPWD/deploy/bench/uas_register_ok.xml" -nostdin >/dev/null 2>&1) & pids+=($!)
cat >"$work/hapbx.yaml" <<YAML
node: {name: regbench}
sip: {listen: ["udp://$PROXY:5060"], advertise: $PROXY}
backends: [{name: asterisk1, address: "$BE:5060", transport: udp}]
registrar: {data_dir: "$work/data", max_bindings: 200000}
admin: {listen: "127.0.0.1:19066"}
log: {level: error, format: json}
# One SIPp address stands in for a whole office: the flood guard would
# (rightly) block one source at these rates. Its own cost per request is
# BenchmarkGuardAllow/BenchmarkUDPDoor (proxy, proxy/limits).
limits: {flood: {rate: 0}}
YAML
"$BIN" run -c "$work/hapbx.yaml" 2>"$work/hapbx.log" & hpid=$!; pids+=($hpid)
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:19066/api/v1/status 2>/dev/null | grep -q '"active_backend": "asterisk1"' && break; sleep 0.1
done
tck=$(getconf CLK_TCK); cpu() { awk -v t="$tck" '{printf "%.3f", ($14+$15)/t}' /proc/$hpid/stat; }
c0=$(cpu); t0=$(date +%s.%N)
out=$(cd "$work" && sipp -i "$PHONES" -p 5070 -sf "$OLDPWD/deploy/bench/uac_register_many.xml" -m "$N" -r "$RATE" \
      -timeout $(( N / RATE * 3 + 20 ))s -nostdin "$PROXY:5060" 2>&1 || true)
t1=$(date +%s.%N); c1=$(cpu)
sleep 1
ok=$(grep -E 'Successful call' <<<"$out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
failed=$(grep -E 'Failed call' <<<"$out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
bindings=$(curl -s http://127.0.0.1:19066/api/v1/status | awk -F': ' '/"bindings"/ {gsub(/,/,"",$2); print $2; exit}')
rss=$(awk '/VmRSS/ {print $2/1024 " MB"}' /proc/$hpid/status)
echo "registration storm: $N phones at $RATE/s through hapbx (one REGISTER each, 200 from a SIPp backend)"
awk -v n="$N" -v ok="${ok:-0}" -v f="${failed:-?}" -v b="$bindings" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v rss="$rss" \
  'BEGIN{printf "  sent %d  answered 200 %d  failed %s  bindings held %s  in %.1fs  hapbx CPU %.2fs (%.0f us/REGISTER)  RSS %s\n", n, ok, f, b, t1-t0, c1-c0, (c1-c0)/n*1e6, rss}'
