package lab

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Every lab SIPp traces its messages (-trace_msg), its unexpected messages
// and aborted calls (-trace_err) and the messages of each call it aborts
// (-trace_calldebug) into its directory; FailedCalls turns them into a
// report a failing test prints. -trace_calldebug alone is not enough: SIPp
// counts a call failed on an unexpected BYE without dumping it.

// sippTraceMax bounds each of a SIPp's error, message and call debug files
// (-max_log_size): a run that fails every call does not fill the disk.
const sippTraceMax = 20 << 20

var (
	// A call's block in a -trace_calldebug file starts with this line.
	reCallDebug = regexp.MustCompile(`(?m)^Call debugging information for call (.+):$`)
	// An event of a -trace_err file starts with its time stamp.
	reErrEvent = regexp.MustCompile(`\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t\d+\.\d+: `)
	// The Call-ID of a -trace_err event in which SIPp aborts a call (an
	// unexpected message or BYE, a timeout without ontimeout).
	reAborted = regexp.MustCompile(`^[^\n]*?(?:Aborting call on unexpected message for Call-Id '([^']+)'|` +
		`Aborting call on an unexpected BYE for call: (\S+)|Call-Id: ([^,\s]+), [^\n]*aborting call)`)
	// The epoch time of a -trace_err event.
	reErrEpoch = regexp.MustCompile(`^\S+\t\S+\t(\d+\.\d+): `)
	// A message of a -trace_msg file starts with this line.
	reMsgStart = regexp.MustCompile(`(?m)^-{20,} \d{4}-\d\d-\d\d[ \t]\d\d:\d\d:\d\d\.\d+$`)
)

// failedCall is one call a SIPp counted failed.
type failedCall struct {
	callID string
	// debug is its -trace_calldebug block ("" when SIPp dumped none): every
	// message of the call SIPp sent and received, and why it aborted it.
	debug string
}

// sippFailedCalls returns the calls p aborted, in the order SIPp dumped
// them (-trace_calldebug), then those only its errors name.
func sippFailedCalls(p *Proc) []failedCall {
	var out []failedCall
	seen := map[string]bool{}
	for _, block := range splitTraces(p, "*_calldebug.log", reCallDebug) {
		id := reCallDebug.FindStringSubmatch(block)[1]
		if !seen[id] {
			seen[id] = true
			out = append(out, failedCall{callID: id, debug: strings.TrimRight(block, "-\n")})
		}
	}
	for _, ev := range sippErrorEvents(p) {
		m := reAborted.FindStringSubmatch(ev)
		if m == nil {
			continue
		}
		id := m[1] + m[2] + m[3]
		if !seen[id] {
			seen[id] = true
			out = append(out, failedCall{callID: id})
		}
	}
	return out
}

// sippErrorEvents returns the events of p's -trace_err files, time stamp first.
func sippErrorEvents(p *Proc) []string {
	var out []string
	for _, ev := range splitTraces(p, "*_errors.log", reErrEvent) {
		out = append(out, strings.TrimRight(ev, "'\n"))
	}
	return out
}

// splitTraces returns the entries of p's trace files matching glob, each
// starting where start matches.
func splitTraces(p *Proc, glob string, start *regexp.Regexp) []string {
	files, _ := filepath.Glob(filepath.Join(p.Dir, glob))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := string(b)
		starts := start.FindAllStringIndex(s, -1)
		for i, st := range starts {
			end := len(s)
			if i+1 < len(starts) {
				end = starts[i+1][0]
			}
			out = append(out, s[st[0]:end])
		}
	}
	return out
}

// sippMessages returns the messages of p's -trace_msg files whose Call-ID
// is callID, each with the line saying when and which way it went.
func sippMessages(p *Proc, callID string) string {
	var b strings.Builder
	for _, msg := range splitTraces(p, "*_messages.log", reMsgStart) {
		if header(msg, "Call-ID", "i") == callID {
			b.WriteString(strings.ReplaceAll(msg, "\r\n", "\n"))
		}
	}
	return b.String()
}

// sippErrors returns the events of p's -trace_err files that name callID.
func sippErrors(p *Proc, callID string) []string {
	var out []string
	for _, ev := range sippErrorEvents(p) {
		if strings.Contains(ev, callID) {
			out = append(out, ev)
		}
	}
	return out
}

// logLines returns the lines of the lab's process logs (the proxies',
// the PBXs', the agents': every Dir/*.log but SIPp's own) that contain
// callID, at most n of each log, the last ones.
func (l *Lab) logLines(callID string, except *Proc, n int) string {
	files, _ := filepath.Glob(filepath.Join(l.opt.Dir, "*.log"))
	var b strings.Builder
	for _, f := range files {
		if except != nil && f == except.LogPath {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var hits []string
		for line := range strings.Lines(string(data)) {
			if strings.Contains(line, callID) {
				hits = append(hits, strings.TrimRight(line, "\n"))
			}
		}
		if len(hits) == 0 {
			continue
		}
		if len(hits) > n {
			fmt.Fprintf(&b, "%s: %d lines, the last %d:\n", filepath.Base(f), len(hits), n)
			hits = hits[len(hits)-n:]
		} else {
			fmt.Fprintf(&b, "%s:\n", filepath.Base(f))
		}
		b.WriteString(strings.Join(hits, "\n") + "\n")
	}
	return b.String()
}

// abortedAt is when SIPp aborted the call its errors errs name (Unix
// seconds), or 0.
func abortedAt(errs []string) float64 {
	for _, e := range errs {
		if !reAborted.MatchString(e) {
			continue
		}
		if m := reErrEpoch.FindStringSubmatch(e); m != nil {
			t, _ := strconv.ParseFloat(m[1], 64)
			return t
		}
	}
	return 0
}

// proxyLinesAround returns the proxies' log lines (not the cluster's)
// from a second before at to half a second after, at most n of each.
func (l *Lab) proxyLinesAround(at float64, n int) string {
	var b strings.Builder
	for _, p := range Proxies {
		data, err := os.ReadFile(filepath.Join(l.opt.Dir, p+".log"))
		if err != nil {
			continue
		}
		var hits []string
		for line := range strings.Lines(string(data)) {
			var e struct {
				TS     float64 `json:"ts"`
				Logger string  `json:"logger"`
			}
			if json.Unmarshal([]byte(line), &e) != nil || strings.HasPrefix(e.Logger, "cluster") ||
				e.TS < at-1 || e.TS > at+0.5 {
				continue
			}
			hits = append(hits, tail(strings.TrimRight(line, "\n"), 400))
		}
		if len(hits) > n {
			hits = hits[:n]
		}
		if len(hits) > 0 {
			fmt.Fprintf(&b, "%s:\n%s\n", p+".log", strings.Join(hits, "\n"))
		}
	}
	return b.String()
}

// FailedCalls reports the calls SIPp process p aborted, at most maxCalls
// of them: each call's Call-ID, SIPp's error events naming it, the last
// perCall bytes of its messages as SIPp sent and received them (with the
// messages that came after SIPp aborted it), the lines of the lab's other
// logs (hapbx's, Asterisk's) that name the Call-ID, and the proxies' log
// lines around the abort (hapbx logs few Call-IDs at level info). "" when
// p aborted no call.
func (l *Lab) FailedCalls(p *Proc, maxCalls, perCall int) string {
	calls := sippFailedCalls(p)
	if len(calls) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d failed call(s)", p.Name, len(calls))
	if len(calls) > maxCalls {
		fmt.Fprintf(&b, ", the first %d", maxCalls)
		calls = calls[:maxCalls]
	}
	b.WriteString("\n")
	for _, c := range calls {
		fmt.Fprintf(&b, "==== failed call %s (%s) ====\n", c.callID, p.Name)
		errs := sippErrors(p, c.callID)
		for i, e := range errs {
			if i == 4 {
				fmt.Fprintf(&b, "-- %d more SIPp errors about it\n", len(errs)-i)
				break
			}
			b.WriteString("-- SIPp error: " + tail(e, perCall/4) + "\n")
		}
		if msgs := sippMessages(p, c.callID); msgs != "" {
			fmt.Fprintf(&b, "-- its messages (SIPp -trace_msg, the last %d bytes):\n%s\n", perCall, tail(msgs, perCall))
		} else if c.debug != "" {
			fmt.Fprintf(&b, "-- its messages (SIPp -trace_calldebug, the last %d bytes):\n%s\n", perCall, tail(c.debug, perCall))
		} else {
			b.WriteString("-- SIPp traced none of its messages\n")
		}
		if logs := l.logLines(c.callID, p, 40); logs != "" {
			b.WriteString("-- the lab's logs naming it:\n" + logs)
		} else {
			b.WriteString("-- no lab log names it\n")
		}
		if at := abortedAt(errs); at > 0 {
			if logs := l.proxyLinesAround(at, 20); logs != "" {
				sec, frac := math.Modf(at)
				fmt.Fprintf(&b, "-- hapbx's log from 1 s before SIPp aborted it (%s) to 0.5 s after:\n%s",
					time.Unix(int64(sec), int64(frac*1e9)).UTC().Format("15:04:05.000"), logs)
			}
		}
	}
	return b.String()
}

// tail returns the last n bytes of s, marked when cut.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[...]" + s[len(s)-n:]
}
