package main

import (
	"slices"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// BenchmarkColdFailover prints, over 10 cold failovers (the holder's
// Asterisk and agent SIGKILLed, the node fenced, the standby's group
// started), the time from "backend declared down" to "standby group
// started", split into hapbx's own overhead (stop/fence, agent calls, DRBD
// promotion, mount, polling) and the service's own start-to-ready time
// (SIPp + AMI standing in for Asterisk), plus kill -> routed again (adds
// health's detection and rise). Target: overhead <= 2 s. It runs the 10
// failovers once whatever b.N is:
//
//	go test ./cmd/hapbx -run '^$' -bench ColdFailover -benchtime 1x
func BenchmarkColdFailover(b *testing.B) {
	l := newColdLab(b)
	nodes := map[string]*pbxNode{"asterisk1": l.addNode("A", false), "asterisk2": l.addNode("B", false)}
	l.startProxy(false)
	s := l.waitStatus("group on A", 15*time.Second, func(s coldStatus) bool { return s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" })
	const runs = 10
	var total, overhead, service, routed []time.Duration
	for range b.N {
		for i := range runs {
			from := s.Cold.Holder
			to := map[string]string{"asterisk1": "asterisk2", "asterisk2": "asterisk1"}[from]
			killed := time.Now()
			l.crash(nodes[from])
			s = l.waitStatus("failover", 20*time.Second, func(s coldStatus) bool {
				return s.Cold.Holder == to && s.Active == to && s.Cold.Last != nil && s.Cold.Last.To == to && !s.Cold.Last.UpAt.IsZero()
			})
			lm := s.Cold.Last
			if lm.Error != "" || !lm.Fenced {
				b.Fatalf("run %d: %+v", i, lm)
			}
			total = append(total, lm.StartedAt.Sub(lm.DownAt))
			service = append(service, lm.ServiceReady)
			overhead = append(overhead, lm.Overhead)
			routed = append(routed, lm.UpAt.Sub(killed))
			// Repair the fenced node: power on, agent back, seen by the proxy.
			l.powerOn(nodes[from])
			s = l.waitStatus("repaired node seen", 10*time.Second, func(s coldStatus) bool {
				for _, n := range s.Cold.Nodes {
					if n.Name == from {
						return n.Reachable && n.Agent.State == "stopped" && n.Agent.DRBDRole == "Secondary"
					}
				}
				return false
			})
		}
	}
	testkit.NeverTwoPrimaries(b, l.drbd.Calls())
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	b.Logf("cold failover over %d runs (shared machine; indicative):", len(total))
	b.Logf("  backend down -> standby group started  median %7s  max %7s", r(med(total)), r(slices.Max(total)))
	b.Logf("    hapbx overhead                        median %7s  max %7s  (target <= 2s)", r(med(overhead)), r(slices.Max(overhead)))
	b.Logf("    service start -> ready (SIPp+AMI)     median %7s  max %7s", r(med(service)), r(slices.Max(service)))
	b.Logf("  SIGKILL -> routed to the standby        median %7s  max %7s  (adds health detection and rise)", r(med(routed)), r(slices.Max(routed)))
	b.ReportMetric(float64(med(overhead).Milliseconds()), "overhead-ms")
	b.ReportMetric(float64(med(service).Milliseconds()), "service-ms")
	b.ReportMetric(float64(med(routed).Milliseconds()), "routed-ms")
}
