// Package testkit is the one kit of the tests: free ports reserved across
// test processes (ports.go), SIPp as a real SIP peer (sipp.go, an OPTIONS
// answering backend in uas.go, scenarios with a large SDP in sdp.go), what
// is bound on UDP (/proc/net/udp), child processes stopped and killed
// (proc.go), waiting on a condition instead of sleeping (wait.go), a
// component's Run in the background (run.go), and the two-node fake DRBD
// whose stand-ins for drbdadm, drbdsetup and an IPMI fence record every
// call (drbd.go, drbd/), and running code inside a network namespace (netns.go).
//
// Tests of every package import it, and so does the namespace lab
// (deploy/lab); production code does not. It imports no package of hapbx, so
// that any package's own tests can use it.
package testkit
