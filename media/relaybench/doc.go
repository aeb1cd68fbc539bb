// Package relaybench measures the media relay: a Go RTP generator drives N
// concurrent calls (two directions of 50 packets/s, 172-byte packets, a send
// timestamp in the payload) either through a relay running in a child process
// (so the relay's CPU time can be read from /proc cleanly) or straight from
// phone to phone (the baseline), and reports received packets/s, loss,
// added latency p50/p99 and the relay's CPU time per relayed packet.
//
// CPU is utime+stime over the measured window: of the relay child from
// /proc, of the generator from getrusage, each divided by the datagrams the
// generator sent. Both do one receive and one send per datagram, so
// relay_cpu_per_pkt compares with the baseline's gen_cpu_per_pkt; the relay
// line also shows the generator's own cost during the relay run. With tick
// accounting, the softirq a loopback send runs (delivery into the receiving
// socket, waking its reader) is charged to the sender: the relay pays for
// delivery into the generator's sockets and the generator for delivery into
// the relay's. offered is the share of the nominal load (calls x 2 x pps)
// the generator managed to send; below 100% the box could not generate the
// load and loss and latency describe a lighter one.
//
// The command is media/relaybench/cmd/relaybench; it re-executes itself as
// the relay child (RELAYBENCH_CHILD=1), which reads "callID aAddr bAddr" lines
// on stdin, anchors each call with synthetic SDP and answers "callID aPort bPort".
package relaybench
