package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/health"
	"github.com/hapbx/hapbx/internal/testkit"
)

// BenchmarkBackendFailover prints issue 3's figures: over 10 repetitions,
// the time from SIGKILL of the active backend to its "down" state, and to
// the first call placed after the kill that the standby answered, with
// calls at 50/s throughout. Run: make bench (or
// go test -run '^$' -bench BackendFailover -benchtime 1x ./cmd/hapbx).
func BenchmarkBackendFailover(b *testing.B) {
	testkit.RequireSIPp(b)
	const reps = 10
	var downs, answers []time.Duration
	failed := 0
	for i := 0; i < reps; i++ {
		down, answer, f := failoverOnce(b)
		downs, answers = append(downs, down), append(answers, answer)
		failed += f
	}
	med, max := medMax(downs)
	amed, amax := medMax(answers)
	h := health.DefaultConfig()
	fmt.Printf("backend failover over %d SIGKILLs of the active backend (health defaults: interval %s, timeout %s, fall %d):\n", reps, h.Interval, h.Timeout, h.Fall)
	fmt.Printf("  SIGKILL -> backend down:                    median %v  max %v\n", med, max)
	fmt.Printf("  SIGKILL -> first new call answered by standby: median %v  max %v\n", amed, amax)
	fmt.Printf("  failed calls: %d\n", failed)
	b.ReportMetric(float64(med.Milliseconds()), "down-median-ms")
	b.ReportMetric(float64(max.Milliseconds()), "down-max-ms")
	b.ReportMetric(float64(amed.Milliseconds()), "answer-median-ms")
	b.ReportMetric(float64(amax.Milliseconds()), "answer-max-ms")
	b.ReportMetric(float64(failed), "failed-calls")
}

func failoverOnce(b *testing.B) (down, answer time.Duration, failed int) {
	d, be1 := startHotPair(b)
	phone := testkit.StartSIPp(b, phoneIP, testkit.FreePort(b, phoneIP), "-sf", scenarioPath("uac_call_ha.xml"),
		"-s", "202", "-m", "150", "-r", "50", "-timeout", "30s", "-trace_rtt", "-rtt_freq", "1", d.sip)
	time.Sleep(1200 * time.Millisecond)
	killed := time.Now()
	be1.Kill()
	d.waitState(b, "asterisk1", "down", 5*time.Second)
	for _, h := range d.status(b)["backends_health"].([]any) {
		m := h.(map[string]any)
		if m["name"] == "asterisk1" {
			since, err := time.Parse(time.RFC3339Nano, m["since"].(string))
			if err != nil {
				b.Fatal(err)
			}
			down = since.Sub(killed)
		}
	}
	phone.Wait(40 * time.Second)
	failed = phone.Counts().Failed
	answer = firstAnswerAfter(b, phone, killed)
	return down, answer, failed
}

// firstAnswerAfter reads sipp's rtt trace (date_ms since sipp started;
// response_time_ms; rtd) and returns, for the first call started after t,
// how long after t its 200 came.
func firstAnswerAfter(b *testing.B, phone *testkit.SIPp, t time.Time) time.Duration {
	dir := phone.Dir
	files, _ := filepath.Glob(filepath.Join(dir, "*_rtt.csv"))
	best := time.Duration(-1)
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fs := strings.Split(line, ";")
			if len(fs) < 2 {
				continue
			}
			at, err1 := strconv.ParseFloat(fs[0], 64)
			rtt, err2 := strconv.ParseFloat(fs[1], 64)
			if err1 != nil || err2 != nil {
				continue
			}
			answered := phone.Started.Add(time.Duration(at * float64(time.Millisecond)))
			started := answered.Add(-time.Duration(rtt * float64(time.Millisecond)))
			if started.After(t) {
				if d := answered.Sub(t); best < 0 || d < best {
					best = d
				}
			}
		}
	}
	if best < 0 {
		b.Fatalf("no call started after the kill in %s", dir)
	}
	return best
}

func medMax(ds []time.Duration) (time.Duration, time.Duration) {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond)
}
