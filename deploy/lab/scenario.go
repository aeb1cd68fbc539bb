package lab

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ScenarioOptions bound the demo/e2e run. Zero values take the defaults.
type ScenarioOptions struct {
	// Phones registering through the VIP (1..20, testdata/phones.csv). Default 20.
	Phones int
	// Rate of new calls per second from the phones namespace. Default 20.
	Rate int
	// Calls placed per event phase (the load stops by itself). Default 6 s worth.
	Calls int
	// EventAfter: how long after a phase's first call the event happens. Default 2 s.
	EventAfter time.Duration
	// Logf receives progress lines; nil: silent.
	Logf func(format string, args ...any)
}

func (o *ScenarioOptions) defaults() {
	if o.Phones <= 0 || o.Phones > 20 {
		o.Phones = 20
	}
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.Calls <= 0 {
		o.Calls = 6 * o.Rate
	}
	if o.EventAfter <= 0 {
		o.EventAfter = 2 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
}

// Event is one row of the scenario's table.
type Event struct {
	Name string
	// Detect: event until the system noticed it (what that means is in Detected).
	Detect   time.Duration
	Detected string
	// NewCalls: event until the first call started after it was set up (-1: none).
	NewCalls time.Duration
	// Calls placed during the phase, and how many failed.
	Calls, Failed int
	// RegsLost: phones without a binding on the VIP holder at the end of the phase.
	RegsLost int
	// MaxSetup is the longest INVITE -> 200 of the phase.
	MaxSetup time.Duration
	Note     string
	// TrunkIn, TrunkOut: with Options.Trunk, the provider's calls in (from
	// its ACL address to a DID) and a backend's calls out through the
	// trunk placed during the phase, and how many of each failed.
	TrunkIn, TrunkInFailed, TrunkOut, TrunkOutFailed int
}

// Report is the outcome of RunScenario.
type Report struct {
	Events []Event
	// Splits: 50 ms samples (both proxies' namespaces) with two VIP holders.
	Splits int
	// Holders is the VIP holder sequence seen over the whole run ("-": none).
	Holders []string
	Samples int
	// Agents is the PBX agents' view at the end ("" without agents).
	Agents string
	// Trunk is what the provider saw of the trunk's registration over the
	// run ("" without Options.Trunk); TrunkErr why it was not one
	// continuous registration (CheckRegistration).
	Trunk    string
	TrunkErr error
}

// watcher samples the VIP holders every 50 ms until stopped.
type watcher struct {
	mu      sync.Mutex
	seq     []string
	splits  int
	samples int
	stop    chan struct{}
	done    chan struct{}
}

func (l *Lab) watch() *watcher {
	w := &watcher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			hs := l.Holders()
			cur := "-"
			if len(hs) > 0 {
				cur = strings.Join(hs, "+")
			}
			w.mu.Lock()
			w.samples++
			if len(hs) > 1 {
				w.splits++
			}
			if len(w.seq) == 0 || w.seq[len(w.seq)-1] != cur {
				w.seq = append(w.seq, cur)
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

func (w *watcher) end() (seq []string, splits, samples int) {
	close(w.stop)
	<-w.done
	return slices.Clone(w.seq), w.splits, w.samples
}

// RunScenario starts the whole service (both backends, witness, both proxies,
// phones registering through the VIP) and then, one after another while calls
// are placed at a steady bounded rate: kills the active PBX, kills the VIP
// holder, brings the dead proxy back, cuts the two proxies apart (both still
// reach the witness), and restores everything. Each event is its own phase
// with its own SIPp caller, so failed calls are counted per event.
func (l *Lab) RunScenario(o ScenarioOptions) (rep Report, err error) {
	o.defaults()
	cold := l.cold()
	for _, be := range Backends {
		if cold {
			break // the agents run the PBXs
		}
		if _, err := l.StartBackend(be); err != nil {
			return rep, err
		}
	}
	pbx := "SIPp playing Asterisk"
	if l.opt.Asterisk != "" {
		pbx = "asterisk " + l.opt.Asterisk + " with deploy/asterisk's configs, chan_pjsip"
		if l.opt.ChanSIP {
			pbx = "asterisk " + l.opt.Asterisk + " with deploy/asterisk's configs, chan_sip"
		}
	}
	if cold {
		o.Logf("cold standby: the PBXs run under their hapbx agents (%s, AMI on :%d)", pbx, AMIPort)
	} else if l.withAMI() {
		o.Logf("backends pbx1, pbx2 up (%s, AMI on :%d)", pbx, AMIPort)
	} else {
		o.Logf("backends pbx1, pbx2 up")
	}
	var provider *Proc
	if l.opt.Trunk {
		if provider = l.Proc("provider"); provider == nil {
			if provider, err = l.StartProvider(); err != nil {
				return rep, err
			}
		}
		o.Logf("provider of trunk %s up on %s (SIPp: registrar with digest and expires %s, 407 to calls out)", TrunkName, Hosts["provider"], TrunkExpires)
	}
	if _, err := l.Up(); err != nil {
		return rep, err
	}
	holder, _ := l.WaitHolder("", time.Second)
	if cold {
		for _, be := range Backends {
			if err := l.StartAgent(be); err != nil {
				return rep, err
			}
		}
	}
	var st Status
	if err := WaitFor(30*time.Second, "an active backend on the holder", func() bool {
		st, err = l.Status(holder)
		_, ami := st.BackendChecks("pbx1")
		return err == nil && st.Active == "pbx1" && (!l.withAMI() || ami != "")
	}); err != nil {
		return rep, err
	}
	sip, ami := st.BackendChecks("pbx1")
	o.Logf("cluster up: %s holds the VIP %s, witness voting, pbx1 active (sip: %s; ami: %s)", holder, VIP, sip, ami)
	if provider != nil {
		if err := WaitFor(10*time.Second, "trunk "+TrunkName+" registered by "+holder, func() bool {
			return l.Metric(holder, `hapbx_trunk_registered{trunk="`+TrunkName+`"}`) == 1
		}); err != nil {
			return rep, fmt.Errorf("%w\n%s", err, provider.Log(2000))
		}
		o.Logf("trunk %s registered at the provider by %s, Contact the VIP", TrunkName, holder)
		defer func() {
			trace, terr := ReadTrace(provider)
			if terr != nil {
				rep.TrunkErr = terr
				return
			}
			n, terr := CheckRegistration(trace, time.Now())
			rep.TrunkErr = terr
			rep.Trunk = fmt.Sprintf("trunk %s: the provider granted %d REGISTERs over the run in one registration (one Call-ID, CSeq rising, Contact the VIP, never expired)", TrunkName, n)
			if terr != nil {
				rep.Trunk = fmt.Sprintf("trunk %s: the provider granted %d REGISTERs, NOT one continuous registration: %v", TrunkName, n, terr)
			}
		}()
	}
	if l.withAgents() {
		for _, be := range Backends {
			if cold {
				break
			}
			if err := l.StartAgent(be); err != nil {
				return rep, err
			}
		}
		if err := WaitFor(10*time.Second, "both agents in the cluster", func() bool {
			s, err := l.Status(holder)
			return err == nil && s.AliveMembers() >= 3+len(Backends)
		}); err != nil {
			return rep, err
		}
		o.Logf("hapbx agents of pbx1, pbx2 joined the cluster; %s", l.AgentsLine())
		defer func() { rep.Agents = l.AgentsLine() }()
	}
	w := l.watch()
	defer func() {
		if w != nil {
			rep.Holders, rep.Splits, rep.Samples = w.end()
		}
	}()

	phones, err := l.startPhones(o.Phones)
	if err != nil {
		return rep, err
	}
	if err := WaitFor(10*time.Second, fmt.Sprintf("%d bindings on both proxies", o.Phones), func() bool {
		for _, p := range Proxies {
			if s, err := l.Status(p); err != nil || s.Registrar.Bindings != o.Phones {
				return false
			}
		}
		return true
	}); err != nil {
		s1, _ := l.Status("proxy1")
		s2, _ := l.Status("proxy2")
		return rep, fmt.Errorf("%w (proxy1 %+v, proxy2 %+v)\n%s", err, s1.Registrar, s2.Registrar, phones.Log(2000))
	}
	o.Logf("%d phones registered through the VIP (digest challenged by pbx1), replicated to both proxies", o.Phones)
	pr, err := l.NewProber("phones")
	if err != nil {
		return rep, err
	}
	defer pr.Close()

	var killedPBX, killedProxy string
	steps := []struct {
		name  string
		event func() (time.Duration, string, string, error)
	}{
		{"kill the active PBX (SIGKILL)", func() (time.Duration, string, string, error) {
			h, err := l.WaitHolder("", time.Second)
			if err != nil {
				return 0, "", "", err
			}
			s, err := l.Status(h)
			if err != nil {
				return 0, "", "", err
			}
			killedPBX = s.Active
			t0 := time.Now()
			if cold {
				if err := l.KillService(killedPBX); err != nil {
					return 0, "", "", err
				}
				err = WaitFor(5*time.Second, killedPBX+" down on "+h, func() bool {
					s, err := l.Status(h)
					return err == nil && s.BackendState(killedPBX) == "down"
				})
				d := time.Since(t0)
				if err == nil {
					err = WaitFor(30*time.Second, Twin2(killedPBX)+" active (cold failover)", func() bool {
						s, err := l.Status(h)
						return err == nil && s.Active == Twin2(killedPBX) && s.BackendState(Twin2(killedPBX)) == "up"
					})
				}
				return d, "health: " + killedPBX + " down", fmt.Sprintf("%s's PBX killed; cold failover: %s promoted, mounted, started in %s",
					killedPBX, Twin2(killedPBX), ms(time.Since(t0))), err
			}
			l.KillBackend(killedPBX)
			err = WaitFor(5*time.Second, killedPBX+" down on "+h, func() bool {
				s, err := l.Status(h)
				return err == nil && s.BackendState(killedPBX) == "down"
			})
			return time.Since(t0), "health: " + killedPBX + " down", fmt.Sprintf("%s killed, calls to %s", killedPBX, Twin2(killedPBX)), err
		}},
		{"kill the VIP holder (SIGKILL)", func() (time.Duration, string, string, error) {
			f, err := l.KillHolder(pr, 5*time.Second)
			killedProxy = f.Killed
			return f.VIP, "VIP on " + f.Twin, fmt.Sprintf("%s killed; first OPTIONS via VIP answered %s", f.Killed, ms(f.SIP)), err
		}},
		{"the dead proxy returns", func() (time.Duration, string, string, error) {
			t0 := time.Now()
			if err := l.StartProxy(killedProxy); err != nil {
				return 0, "", "", err
			}
			err := l.WaitStable(15 * time.Second)
			return time.Since(t0), "3 members, quorum", killedProxy + " restarted, rejoined", err
		}},
		{"cut proxy1 from proxy2 (nft)", func() (time.Duration, string, string, error) {
			// Both still reach the witness: the holder keeps its quorum, so there
			// is nothing to detect or move (memberlist even keeps both alive
			// through indirect probes via the witness). What counts: one holder.
			h, _ := l.WaitHolder("", time.Second)
			if err := l.Cut("proxy1", "proxy2"); err != nil {
				return 0, "", "", err
			}
			seq, err := l.Watch(o.EventAfter)
			return -1, "nothing to move", fmt.Sprintf("both reach the witness; holders while cut %v (was %s)", seq, h), err
		}},
		{"restore everything", func() (time.Duration, string, string, error) {
			t0 := time.Now()
			l.Heal("proxy1", "proxy2")
			if cold {
				// No failback in cold standby: moving the group is an outage.
				err := WaitFor(15*time.Second, "cluster whole, "+Twin2(killedPBX)+" still active", func() bool {
					h := l.Holders()
					if len(h) != 1 {
						return false
					}
					s, err := l.Status(h[0])
					return err == nil && s.Active == Twin2(killedPBX) && l.WaitStable(0) == nil
				})
				return time.Since(t0), "whole, " + Twin2(killedPBX) + " active", "pair healed; cold: no failback to " + killedPBX, err
			}
			if _, err := l.StartBackend(killedPBX); err != nil {
				return 0, "", "", err
			}
			err := WaitFor(15*time.Second, "cluster whole and pbx1 active again", func() bool {
				h := l.Holders()
				if len(h) != 1 {
					return false
				}
				s, err := l.Status(h[0])
				return err == nil && s.Active == Backends[0] && l.WaitStable(0) == nil
			})
			return time.Since(t0), "whole, pbx1 active", "pair healed, " + killedPBX + " back (calls fail back)", err
		}},
	}
	for i, st := range steps {
		ev, err := l.phase(i+1, st.name, o, st.event)
		rep.Events = append(rep.Events, ev)
		if err != nil {
			return rep, fmt.Errorf("%s: %w", st.name, err)
		}
		o.Logf("%-32s detect %-8s new calls OK %-8s calls %d failed %d regs lost %d trunk in %d/%d out %d/%d failed  (%s)", ev.Name, ms(ev.Detect),
			ms(ev.NewCalls), ev.Calls, ev.Failed, ev.RegsLost, ev.TrunkInFailed, ev.TrunkIn, ev.TrunkOutFailed, ev.TrunkOut, ev.Note)
	}
	return rep, nil
}

// startPhones starts n SIPp phones registering through the VIP and
// answering calls (phones_register.xml, phone_answer.xml): one SIPp for
// all, sharing the digest user of pjsip.conf's lab accounts; with chan_sip,
// which takes the peer's name as the digest user and which one SIPp cannot
// vary per phone, one SIPp per phone with its own (ports 5100 up). It
// returns the first.
func (l *Lab) startPhones(n int) (*Proc, error) {
	if !l.opt.ChanSIP || l.opt.Asterisk == "" {
		return l.Sipp("phones", "phones", 5070, "-sf", l.Scenario("phones_register.xml"),
			"-inf", l.Scenario("phones.csv"), "-oocsf", l.Scenario("phone_answer.xml"),
			"-m", strconv.Itoa(n), "-r", "50", "-l", strconv.Itoa(n), "-d", "600000", "-timeout", "300s", VIP+":5060")
	}
	exts, err := l.labPhones()
	if err != nil {
		return nil, err
	}
	var first *Proc
	for i, ext := range exts[:min(n, len(exts))] {
		scen, err := l.ownCredentials(l.Scenario("phones_register.xml"), ext)
		if err != nil {
			return nil, err
		}
		inf := filepath.Join(l.opt.Dir, "phone-"+ext+".csv")
		if err := os.WriteFile(inf, []byte("SEQUENTIAL\n"+ext+";\n"), 0o644); err != nil {
			return nil, err
		}
		p, err := l.Sipp("phones", "phones-"+ext, 5100+i, "-sf", scen, "-inf", inf, "-oocsf", l.Scenario("phone_answer.xml"),
			"-m", "1", "-d", "600000", "-timeout", "300s", VIP+":5060")
		if err != nil {
			return nil, err
		}
		if first == nil {
			first = p
		}
	}
	return first, nil
}

// ownCredentials writes a copy of SIPp scenario path whose digest user is
// user instead of the lab's shared one and returns its path.
func (l *Lab) ownCredentials(path, user string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	shared := "username=" + PhoneUser + " "
	if !strings.Contains(string(b), shared) {
		return "", fmt.Errorf("lab: %s has no %q to replace", path, shared)
	}
	out := filepath.Join(l.opt.Dir, strings.TrimSuffix(filepath.Base(path), ".xml")+"-"+user+".xml")
	return out, os.WriteFile(out, []byte(strings.ReplaceAll(string(b), shared, "username="+user+" ")), 0o644)
}

// Twin2 is the other backend.
func Twin2(be string) string {
	if be == "pbx1" {
		return "pbx2"
	}
	return "pbx1"
}

func ms(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + " ms"
}

// phase places o.Calls calls at o.Rate through the VIP, runs event after
// o.EventAfter, waits for the caller to finish and measures.
func (l *Lab) phase(n int, name string, o ScenarioOptions, event func() (time.Duration, string, string, error)) (ev Event, err error) {
	ev = Event{Name: name, NewCalls: -1}
	scen := l.Scenario("uac_call_lab.xml")
	if l.opt.ChanSIP && l.opt.Asterisk != "" {
		// The callers call as phone 201.
		if scen, err = l.ownCredentials(scen, "201"); err != nil {
			return ev, err
		}
	}
	caller, err := l.Sipp("phones", fmt.Sprintf("calls%d", n), 5080+n, "-sf", scen, "-inf", l.Scenario("calls.csv"),
		"-r", strconv.Itoa(o.Rate), "-m", strconv.Itoa(o.Calls), "-l", strconv.Itoa(4*o.Rate),
		"-timeout", "60s", "-recv_timeout", "20s", "-trace_rtt", "-rtt_freq", "1", VIP+":5060")
	if err != nil {
		return ev, err
	}
	var trunkIn, trunkOut *Proc
	if l.opt.Trunk {
		if trunkIn, trunkOut, err = l.trunkCalls(n, o); err != nil {
			return ev, err
		}
	}
	time.Sleep(o.EventAfter)
	t0 := time.Now()
	detect, what, note, evErr := event()
	ev.Detect, ev.Detected, ev.Note = detect, what, note
	if code := caller.Wait(90 * time.Second); code < 0 {
		return ev, fmt.Errorf("caller did not finish within 90 s or died by a signal; its output: %s", caller.LogPath)
	}
	ev.Calls, ev.Failed = sippCounts(caller)
	if ev.Failed > 0 {
		o.Logf("%s: %d of %d calls failed\n%s", name, ev.Failed, ev.Calls, l.failedReport(caller))
	}
	for _, c := range []struct {
		p         *Proc
		n, failed *int
	}{{trunkIn, &ev.TrunkIn, &ev.TrunkInFailed}, {trunkOut, &ev.TrunkOut, &ev.TrunkOutFailed}} {
		if c.p == nil {
			continue
		}
		if code := c.p.Wait(90 * time.Second); code < 0 {
			return ev, fmt.Errorf("trunk caller %s did not finish within 90 s or died by a signal; its output: %s", c.p.Name, c.p.LogPath)
		}
		if *c.n, *c.failed = sippCounts(c.p); *c.failed > 0 {
			o.Logf("%s: %d of %d trunk calls failed (%s)\n%s", name, *c.failed, *c.n, c.p.Name, l.failedReport(c.p))
		}
	}
	for _, c := range sippRTT(caller) {
		if c.start.Before(t0) {
			continue
		}
		if d := c.end.Sub(t0); ev.NewCalls < 0 || d < ev.NewCalls {
			ev.NewCalls = d
		}
	}
	for _, c := range sippRTT(caller) {
		ev.MaxSetup = max(ev.MaxSetup, c.end.Sub(c.start))
	}
	ev.RegsLost = o.Phones
	if h, err := l.WaitHolder("", 2*time.Second); err == nil {
		if s, err := l.Status(h); err == nil {
			ev.RegsLost = o.Phones - s.Registrar.Bindings
		}
	}
	return ev, evErr
}

// failedReport is FailedCalls of a phase's caller, bounded for a test's
// output, or why there is none.
func (l *Lab) failedReport(p *Proc) string {
	if r := l.FailedCalls(p, 3, 8<<10); r != "" {
		return r
	}
	return p.Name + ": SIPp dumped no failed call's messages\n" + p.Log(4000)
}

var (
	reSuccess = regexp.MustCompile(`Successful call\s*\|\s*\d+\s*\|\s*(\d+)`)
	reFailed  = regexp.MustCompile(`Failed call\s*\|\s*\d+\s*\|\s*(\d+)`)
)

// sippCounts reads the cumulative successful and failed calls of sipp's last screen.
func sippCounts(p *Proc) (calls, failed int) {
	var text strings.Builder
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_screen.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		text.Write(b)
	}
	b, _ := os.ReadFile(p.LogPath)
	text.Write(b)
	var ok int
	if m := reSuccess.FindAllStringSubmatch(text.String(), -1); len(m) > 0 {
		ok, _ = strconv.Atoi(m[len(m)-1][1])
	}
	if m := reFailed.FindAllStringSubmatch(text.String(), -1); len(m) > 0 {
		failed, _ = strconv.Atoi(m[len(m)-1][1])
	}
	return ok + failed, failed
}

type setup struct{ start, end time.Time }

// sippRTT reads sipp's -trace_rtt file: per call, when INVITE -> 200 ended
// (ms since sipp started) and how long it took.
func sippRTT(p *Proc) []setup {
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_rtt.csv"))
	var out []setup
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		out = append(out, parseRTT(fh, p.Started)...)
		fh.Close()
	}
	return out
}

func parseRTT(r io.Reader, started time.Time) []setup {
	var out []setup
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ";")
		if len(f) < 2 {
			continue
		}
		at, err1 := strconv.ParseFloat(f[0], 64)
		rt, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil {
			continue
		}
		end := started.Add(time.Duration(at * float64(time.Millisecond)))
		out = append(out, setup{start: end.Add(-time.Duration(rt * float64(time.Millisecond))), end: end})
	}
	return out
}

// Table renders the report as one table.
func (r Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-30s %-10s %-20s %-13s %-10s %-13s %-10s %-17s %s\n", "event", "detection", "(what)", "new calls OK",
		"max setup", "calls failed", "regs lost", "trunk in/out fail", "note")
	for _, e := range r.Events {
		trunk := "-"
		if e.TrunkIn+e.TrunkOut > 0 {
			trunk = fmt.Sprintf("%d/%d %d/%d", e.TrunkInFailed, e.TrunkIn, e.TrunkOutFailed, e.TrunkOut)
		}
		fmt.Fprintf(&b, "%-30s %-10s %-20s %-13s %-10s %-13s %-10d %-17s %s\n", e.Name, ms(e.Detect), e.Detected, ms(e.NewCalls),
			ms(e.MaxSetup), fmt.Sprintf("%d/%d", e.Failed, e.Calls), e.RegsLost, trunk, e.Note)
	}
	if r.Trunk != "" {
		b.WriteString(r.Trunk + "\n")
	}
	fmt.Fprintf(&b, "VIP holders sampled every 50 ms in both proxy namespaces: %d samples, %d with two holders; sequence %v\n",
		r.Samples, r.Splits, r.Holders)
	if r.Agents != "" {
		b.WriteString(r.Agents + "\n")
	}
	return b.String()
}
