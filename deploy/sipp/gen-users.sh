#!/bin/sh
# gen-users.sh: the SIPp injection file for register.xml and call.xml, and
# (optionally) the matching Asterisk accounts, so the load test's phones
# exist on the PBX.
#
#   gen-users.sh -n COUNT [-f FIRST] [-d DOMAIN] [-p PREFIX] [-a sip|pjsip]
#
#   -n COUNT   number of phones (required; at most 100000)
#   -f FIRST   first extension (default 70000: keep test phones in a range of
#              their own, away from real extensions)
#   -d DOMAIN  SIP domain in From/To and the REGISTER Request-URI
#              (default 192.168.1.13, the VIP; your realm's domain if phones use one)
#   -p PREFIX  password prefix; each password is PREFIX plus the extension
#              (default loadtest-; change it: these accounts are real)
#   -a KIND    instead of the CSV, print accounts for Asterisk: sip (sip.conf
#              peers) or pjsip (pjsip.conf endpoint/auth/aor), context
#              [loadtest]. Remove them after the test.
#
# CSV format (SIPp -inf): first line SEQUENTIAL, then
#   user;password;domain;[authentication username=user password=password]
# (SIPp does not expand [fieldN] inside [authentication ...], so the whole
# keyword is field 3.)
set -eu

count= first=70000 domain=192.168.1.13 prefix=loadtest- kind=
while getopts n:f:d:p:a: opt; do
	case $opt in
	n) count=$OPTARG ;;
	f) first=$OPTARG ;;
	d) domain=$OPTARG ;;
	p) prefix=$OPTARG ;;
	a) kind=$OPTARG ;;
	*) sed -n '2,22p' "$0" >&2; exit 2 ;;
	esac
done
case $count in '' | *[!0-9]*) echo "gen-users.sh: -n COUNT is required (a number)" >&2; exit 2 ;; esac
case $first in '' | *[!0-9]*) echo "gen-users.sh: -f FIRST must be a number" >&2; exit 2 ;; esac
if [ "$count" -lt 1 ] || [ "$count" -gt 100000 ]; then
	echo "gen-users.sh: -n must be 1..100000 (the registrar's default max_bindings)" >&2
	exit 2
fi
# ; separates CSV fields; a space or ] would end SIPp's [authentication ...] keyword.
case $domain in *[\;\ \]]* | '') echo "gen-users.sh: bad -d domain" >&2; exit 2 ;; esac
case $prefix in *[\;\ \]]*) echo "gen-users.sh: -p must not contain ;, ] or spaces" >&2; exit 2 ;; esac

last=$((first + count - 1))
case $kind in
'')
	echo SEQUENTIAL
	seq "$first" "$last" | awk -v p="$prefix" -v d="$domain" \
		'{ printf "%s;%s%s;%s;[authentication username=%s password=%s%s]\n", $1, p, $1, d, $1, p, $1 }'
	;;
sip)
	seq "$first" "$last" | awk -v p="$prefix" '{
		printf "[%s]\ntype=friend\nhost=dynamic\ncontext=loadtest\nsecret=%s%s\nnat=force_rport,comedia\ndisallow=all\nallow=ulaw,alaw\n\n", $1, p, $1 }'
	;;
pjsip)
	seq "$first" "$last" | awk -v p="$prefix" '{
		printf "[%s]\ntype=endpoint\ncontext=loadtest\ndisallow=all\nallow=ulaw,alaw\nauth=%s-auth\naors=%s\nrewrite_contact=yes\nrtp_symmetric=yes\n\n", $1, $1, $1
		printf "[%s-auth]\ntype=auth\nauth_type=userpass\nusername=%s\npassword=%s%s\n\n", $1, $1, p, $1
		printf "[%s]\ntype=aor\nmax_contacts=5\nremove_existing=yes\n\n", $1 }'
	;;
*)
	echo "gen-users.sh: -a must be sip or pjsip" >&2
	exit 2
	;;
esac
