package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The lab's SIP trunk (Options.Trunk): the proxies have the trunk
// TrunkName (deploy/asterisk's dialplan calls out through "p1"), whose one
// host is SIPp in the provider namespace and whose ACL is that namespace's
// address. StartProvider runs the provider there (provider_lab.xml): a
// registrar that challenges and grants TrunkExpires (the VIP holder
// registers, the twin continues the registration after a VIP move) and a
// UAS for calls out that challenges them with 407 and hangs up 1 s after
// answering. TrunkCall places the same INVITE (trunk_call_lab.xml) from
// any host, TrunkCallsOut a backend's calls out through the trunk
// (trunk_backend_uac.xml).

// Trunk settings of the lab.
const (
	TrunkName     = "p1"
	TrunkUser     = "4930123"
	TrunkPassword = "s3cret"
	// TrunkExpires is the expiry provider_lab.xml grants.
	TrunkExpires = 10 * time.Second
)

func (l *Lab) trunkSecretFile() string { return filepath.Join(l.opt.Dir, "trunk.secret") }

// trunkYAML is the proxies' trunks: section.
func (l *Lab) trunkYAML() string {
	return fmt.Sprintf("trunks:\n  - {name: %s, hosts: [\"%s:%d\"], credentials_file: %q, register: true, register_interval: 60s, user: %q, domain: provider.test}\n",
		TrunkName, Hosts["provider"], SIPPort, l.trunkSecretFile(), TrunkUser)
}

// StartProvider runs the provider (its messages traced, for ReadTrace)
// and returns once it listens.
func (l *Lab) StartProvider() (*Proc, error) {
	p, err := l.Sipp("provider", "provider", SIPPort, "-sf", l.Scenario("provider_lab.xml"), "-trace_msg")
	if err != nil {
		return nil, err
	}
	return p, l.waitUDP("provider", SIPPort, p)
}

// TrunkCall calls extension ext at the VIP from host h (SIPp on port, one
// call of trunk_call_lab.xml, its messages traced): from the provider's
// address a trunk call, from any other the same INVITE as anyone's.
func (l *Lab) TrunkCall(h, name, ext string, port int) (*Proc, error) {
	return l.Sipp(h, name, port, "-sf", l.Scenario("trunk_call_lab.xml"), "-s", ext, "-m", "1",
		"-timeout", "10s", "-timeout_error", "-trace_msg", VIP+":"+strconv.Itoa(SIPPort))
}

// Traced is one message of a SIPp message trace.
type Traced struct {
	At       time.Time
	Received bool
	Msg      string
}

var traceSep = regexp.MustCompile(`(?m)^-{47} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\r?\n`)

// ReadTrace ends p (SIGTERM, so that sipp flushes its trace) and returns
// the messages of its -trace_msg log, in order.
func ReadTrace(p *Proc) ([]Traced, error) {
	p.Signal(syscall.SIGTERM)
	p.Wait(5 * time.Second)
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_messages.log"))
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no message trace in %s", p.Name, p.Dir)
	}
	var out []Traced
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		text := string(b)
		idx := traceSep.FindAllStringSubmatchIndex(text, -1)
		for i, m := range idx {
			end := len(text)
			if i+1 < len(idx) {
				end = idx[i+1][0]
			}
			at, err := time.ParseInLocation("2006-01-02 15:04:05.000000", text[m[2]:m[3]], time.Local)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			head, msg, _ := strings.Cut(text[m[1]:end], "\n")
			// Lines end in CRLF, as on the wire (header reads them so).
			msg = strings.ReplaceAll(strings.ReplaceAll(strings.TrimLeft(msg, "\r\n"), "\r\n", "\n"), "\n", "\r\n")
			out = append(out, Traced{At: at, Received: strings.Contains(head, "received"), Msg: msg})
		}
	}
	return out, nil
}

// CheckRegistration checks the provider's trace (ReadTrace) of the
// trunk's registration up to end: one registration (one Call-ID, CSeq
// rising, a retransmission with the same Via aside, Contact the VIP), each 200 followed by the next before
// TrunkExpires ran out, the last still valid at end. It returns how many
// 200s the provider sent.
func CheckRegistration(trace []Traced, end time.Time) (int, error) {
	var errs []error
	callID, lastCSeq, lastVia := "", 0, ""
	var oks []time.Time
	for _, m := range trace {
		switch {
		case m.Received && strings.HasPrefix(m.Msg, "REGISTER "):
			cid := header(m.Msg, "Call-ID", "i")
			if callID == "" {
				callID = cid
			} else if cid != callID {
				errs = append(errs, fmt.Errorf("a second registration: Call-ID %s after %s", cid, callID))
			}
			n, _ := strconv.Atoi(strings.Fields(header(m.Msg, "CSeq", "CSeq") + " 0")[0])
			via := header(m.Msg, "Via", "v")
			if n < lastCSeq || n == lastCSeq && via != lastVia { // the same Via: a retransmission
				errs = append(errs, fmt.Errorf("CSeq %d after %d at %s", n, lastCSeq, m.At.Format("15:04:05.000")))
			}
			lastCSeq, lastVia = n, via
			if c := header(m.Msg, "Contact", "m"); !strings.Contains(c, "@"+VIP+":") && !strings.Contains(c, "@"+VIP+">") {
				errs = append(errs, fmt.Errorf("Contact %q is not the VIP", c))
			}
		case !m.Received && strings.HasPrefix(m.Msg, "SIP/2.0 200 ") && strings.Contains(header(m.Msg, "CSeq", "CSeq"), "REGISTER"):
			oks = append(oks, m.At)
		}
	}
	if len(oks) == 0 {
		return 0, errors.Join(append(errs, errors.New("the provider granted no registration"))...)
	}
	for i := 1; i < len(oks); i++ {
		if gap := oks[i].Sub(oks[i-1]); gap >= TrunkExpires {
			errs = append(errs, fmt.Errorf("expired: %s between the 200 at %s and the next", gap.Round(time.Millisecond), oks[i-1].Format("15:04:05.000")))
		}
	}
	if gap := end.Sub(oks[len(oks)-1]); gap >= TrunkExpires {
		errs = append(errs, fmt.Errorf("expired at the end: last 200 %s before", gap.Round(time.Millisecond)))
	}
	return len(oks), errors.Join(errs...)
}

// TrunkDID is the number the provider's calls in dial: deploy/asterisk's
// [from-trunk] rings its last three digits, the lab's phone 201.
const TrunkDID = "4930201"

// trunkCalls starts phase n's trunk calls, a twentieth of the phones' at a
// twentieth of their rate (at least 1/s; more would add to the burst of
// held calls a just-started PBX gets in a cold failover, which the lab's
// loaded machine already sometimes fails): the provider's calls in from its
// ACL address to TrunkDID, and calls out through the trunk from pbx2's
// address (a backend: whichever PBX is active, hapbx trusts the address;
// pbx2 is never the one killed) to the provider, which challenges them
// with 407 and hangs up 1 s after answering.
func (l *Lab) trunkCalls(n int, o ScenarioOptions) (in, out *Proc, err error) {
	rate, calls := strconv.Itoa(max(1, o.Rate/20)), strconv.Itoa(max(1, o.Calls/20))
	common := []string{"-r", rate, "-m", calls, "-l", strconv.Itoa(4 * max(1, o.Rate/20)), "-timeout", "60s", "-recv_timeout", "20s", VIP + ":" + strconv.Itoa(SIPPort)}
	if in, err = l.Sipp("provider", fmt.Sprintf("trunkin%d", n), 5090+n, append([]string{"-sf", l.Scenario("trunk_call_lab.xml"), "-s", TrunkDID}, common...)...); err != nil {
		return nil, nil, err
	}
	// Below 5000: pbx2's Asterisk takes RTP ports anywhere in its default
	// range 5000-31000, and a SIPp that cannot bind its port places no call.
	out, err = l.Sipp("pbx2", fmt.Sprintf("trunkout%d", n), 4090+n, append([]string{"-sf", l.Scenario("trunk_backend_uac.xml"), "-s", "4930999"}, common...)...)
	return in, out, err
}
