# Shared by the drbdadm and drbdsetup stand-ins. A two-node DRBD "cluster"
# kept in files under $DRBD_STUB_DIR (shared by node A and node B):
#   role.N   Primary|Secondary      disk.N  UpToDate|Outdated|Inconsistent|...
#   up.N     exists while node N is powered on (fence-node removes it)
#   sb       exists after a split brain: both sides StandAlone
#   calls.log  every call: time, node, command, exit status, roles after it
# $DRBD_STUB_NODE is this node (A or B); $DRBD_STUB_RES the resource (r0).
set -u
D=${DRBD_STUB_DIR:?DRBD_STUB_DIR not set}
N=${DRBD_STUB_NODE:?DRBD_STUB_NODE not set}
RES=${DRBD_STUB_RES:-r0}
if [ "$N" = A ]; then P=B; PID_=1; else P=A; PID_=0; fi
PEERNAME=node-$(echo "$P" | tr AB ab)

rd() { # rd FILE DEFAULT: file content or default, without forking
	local v
	if [ -f "$1" ] && read -r v <"$1"; then printf '%s' "$v"; else printf '%s' "$2"; fi
}
role() { rd "$D/role.$1" Secondary; }
disk() { rd "$D/disk.$1" UpToDate; }
isup() { [ -f "$D/up.$1" ]; }
conn() { # connection as seen from $N
	if [ -f "$D/sb" ]; then echo StandAlone
	elif isup "$P"; then echo Connected
	else echo Connecting; fi
}
roles() {
	local a b
	a=$(role A); isup A || a="$a(down)"
	b=$(role B); isup B || b="$b(down)"
	echo "A=$a B=$b"
}
logcall() { # logcall EXIT WORDS...
	local rc=$1; shift
	echo "$(date +%s.%N) node=$N $* exit=$rc $(roles)" >>"$D/calls.log"
}
