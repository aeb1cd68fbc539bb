#!/usr/bin/env bash
# hapbx demo: hapbx in front of two SIPp "Asterisk" backends on loopback.
# It places calls through hapbx, kills the preferred backend, places calls
# again, and prints one table. Everything it starts is stopped on exit,
# Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${HAPBX_BIN:-bin/hapbx}
SCEN=proxy/testdata
PROXY=127.0.9.1 BE1=127.0.9.11 BE2=127.0.9.12 PHONE=127.0.9.50
CALLS=${CALLS:-30} RATE=${RATE:-15}

command -v sipp >/dev/null || {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq sip-tester >/dev/null
  else echo "demo: sipp missing: run as root (it installs sip-tester) or apt-get install sip-tester" >&2; exit 1; fi
}
[ -x "$BIN" ] || { echo "demo: $BIN missing: run make build" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted, cleaned up"; exit 130' INT TERM

backend() { # name ip: a SIPp UAS answering calls until killed
  (cd "$work" && exec sipp -i "$2" -p 5060 -sf "$OLDPWD/$SCEN/uas_call.xml" -nostdin >"$work/$1.log" 2>&1) &
  pids+=($!); eval "pid_$1=$!"
}
backend asterisk1 "$BE1"
backend asterisk2 "$BE2"

cat >"$work/hapbx.yaml" <<YAML
node: {name: demo}
sip:
  listen: ["udp://$PROXY:5060"]
  advertise: $PROXY
  hop_timeout: 500ms
backends:
  - {name: asterisk1, address: "$BE1:5060", transport: udp}
  - {name: asterisk2, address: "$BE2:5060", transport: udp}
routing: active-standby
registrar: {data_dir: "$work/data"}
admin: {listen: "127.0.0.1:19069"}
log: {level: warn, format: console}
YAML
"$BIN" run -c "$work/hapbx.yaml" 2>"$work/hapbx.log" &
pids+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:19069/healthz >/dev/null 2>&1 && break; sleep 0.1; done

calls() { # label: place $CALLS calls through hapbx, print one table row
  local out; out=$(cd "$work" && sipp -i "$PHONE" -p 5070 -sf "$OLDPWD/$SCEN/uac_call.xml" -s 202 \
      -m "$CALLS" -r "$RATE" -timeout 60s -nostdin "$PROXY:5060" 2>&1 || true)
  local ok failed
  ok=$(grep -E 'Successful call' <<<"$out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep -E 'Failed call' <<<"$out" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  local sel; sel=$(curl -s http://127.0.0.1:19069/metrics | awk '/^hapbx_proxy_backend_selected_total/ {printf "%s=%s ", $1, $2}' | sed 's/hapbx_proxy_backend_selected_total{backend="\([^"]*\)"}/\1/g')
  printf '%-44s %6s %6s %7s   %s\n' "$1" "$CALLS" "${ok:-0}" "${failed:-?}" "$sel"
}

echo "hapbx demo: proxy $PROXY:5060, backends asterisk1 $BE1:5060 (preferred), asterisk2 $BE2:5060"
printf '%-44s %6s %6s %7s   %s\n' "step" "calls" "ok" "failed" "INVITEs per backend (cumulative)"
calls "both backends up"
{ kill -9 "$pid_asterisk1"; wait "$pid_asterisk1"; } 2>/dev/null || true
calls "asterisk1 killed (SIGKILL): retried on asterisk2"
echo
echo "Each call after the kill waited hop_timeout (500ms) for asterisk1, then went to asterisk2;"
echo "no caller saw a failure. Health probes (next issue) take a dead backend out of rotation."
