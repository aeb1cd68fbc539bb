// Package relaybench measures the media relay: a Go RTP generator drives N
// concurrent calls (two directions of 50 packets/s, 172-byte packets, a send
// timestamp in the payload) through a relay, or straight from phone to
// phone (the baseline), and reports loss, added latency p50/p99 and CPU per
// relayed packet.
//
// The generator offers thousands of calls on two cores: many streams share
// one socket (250 by default; the relay latches each of its ports to the
// socket's address), each 1 ms slot's datagrams of a socket leave with one
// sendmmsg, and receivers drain the sockets with recvmmsg every millisecond. offered is the
// share of the nominal load (calls x 2 x pps) it managed to send; below 100%
// loss and latency describe a lighter load.
//
// The command (media/relaybench/cmd/relaybench) runs, for each number of
// calls, the baseline and the relays side by side: hapbx's relay in user
// space and in kernel mode with either engine, nftables or eBPF (a child
// process re-executing the command, RELAYBENCH_CHILD=1, which reads
// "callID aAddr bAddr" lines on stdin, anchors each call with synthetic
// SDP and answers "callID aPort bPort"),
// and rtpengine in user-space mode over its ng protocol.
//
// Latency is from the send (a wall-clock stamp written just before the
// datagram's sendmmsg) to the kernel's receive stamp (SO_TIMESTAMPNS) on
// the phones' host, the moment it arrives there, as a phone's NIC would
// see it; "app" latency runs on to the generator's read and adds its own
// wait for a CPU, which on a busy two-core machine is most of it. As root the
// generator and the relay sit in two network namespaces joined by a veth
// pair, so kernel forwarding takes the path it takes on a NIC.
//
// CPU per relayed packet is given two ways, both minus the baseline's per
// packet at the same load: the busy time of all CPUs from /proc/stat
// (softirq included; exact only on an otherwise idle machine), and the CPU
// of the generator, the relay process and the ksoftirqd threads (robust to
// other jobs; tick accounting charges softirq to the task it interrupted,
// which for veth traffic is mostly the sender). Each is the difference of
// two runs' totals, and the generator's own cost varies from run to run by
// more than a kernel relay's whole cost: -repeat runs the baseline and the
// relays several times, alternating, and prints the medians. With a
// kernel engine the measured window starts once the relay has settled
// (every leg handed to the kernel, its process quiet), so that it measures
// the forwarding, not the hand-over.
package relaybench
