// Package relaybench measures the media relay: a Go RTP generator drives N
// concurrent calls (two directions of 50 packets/s, 172-byte packets, a send
// timestamp in the payload) either through a relay running in a child process
// (so the relay's CPU time can be read from /proc cleanly) or straight from
// phone to phone (the baseline), and reports received packets/s, loss,
// added latency p50/p99 and the relay's CPU time per relayed packet.
//
// The command is media/relaybench/cmd/relaybench; it re-executes itself as
// the relay child (RELAYBENCH_CHILD=1), which reads "callID aAddr bAddr" lines
// on stdin, anchors each call with synthetic SDP and answers "callID aPort bPort".
package relaybench
