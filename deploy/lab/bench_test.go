package lab

import (
	"slices"
	"testing"
	"time"
)

// BenchmarkVIPFailover: 10 SIGKILLs of the VIP holder in one lab; after each,
// the killed proxy is restarted and the cluster settles. Prints median and max
// of SIGKILL -> VIP on the twin and SIGKILL -> first SIP transaction answered
// through the VIP. Run with -benchtime 1x:
//
//	go test -run '^$' -bench VIPFailover -benchtime 1x ./deploy/lab
func BenchmarkVIPFailover(b *testing.B) {
	l := newLab(b, Options{SIPpBackends: true})
	upWithBackends(b, l)
	pr := newProber(b, l)
	for range b.N {
		var vip, sip []time.Duration
		for i := 0; i < 10; i++ {
			f, err := l.KillHolder(pr, 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			vip, sip = append(vip, f.VIP), append(sip, f.SIP)
			b.Logf("rep %2d: SIGKILL %s -> VIP on %s %s, first OPTIONS answered %s", i+1, f.Killed, f.Twin,
				f.VIP.Round(time.Millisecond), f.SIP.Round(time.Millisecond))
			if err := l.StartProxy(f.Killed); err != nil {
				b.Fatal(err)
			}
			if err := l.WaitStable(15 * time.Second); err != nil {
				b.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		mv, xv := medMax(vip)
		ms, xs := medMax(sip)
		b.Logf("VIP failover over 10 SIGKILLs of the holder: VIP on the twin median %s max %s; first SIP answer through the VIP median %s max %s",
			mv, xv, ms, xs)
		b.ReportMetric(float64(mv.Milliseconds()), "vip-median-ms")
		b.ReportMetric(float64(xv.Milliseconds()), "vip-max-ms")
		b.ReportMetric(float64(ms.Milliseconds()), "sip-median-ms")
		b.ReportMetric(float64(xs.Milliseconds()), "sip-max-ms")
	}
}

func medMax(ds []time.Duration) (time.Duration, time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med.Round(time.Millisecond), s[n-1].Round(time.Millisecond)
}
