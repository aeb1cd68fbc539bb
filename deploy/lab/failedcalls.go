package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Every lab SIPp dumps the messages of each call it counts failed
// (-trace_calldebug, nothing for a successful call) and its unexpected
// messages (-trace_err) into its directory; FailedCalls turns them into a
// report a failing test prints.

// sippTraceMax bounds each of a SIPp's error, message and call debug files
// (-max_log_size): a run that fails every call does not fill the disk.
const sippTraceMax = 20 << 20

var (
	// A call's block in a -trace_calldebug file starts with this line.
	reCallDebug = regexp.MustCompile(`(?m)^Call debugging information for call (.+):$`)
	// An event of a -trace_err file starts with its time stamp.
	reErrEvent = regexp.MustCompile(`\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t\d+\.\d+: `)
)

// failedCall is one call a SIPp counted failed.
type failedCall struct {
	callID string
	// debug is its -trace_calldebug block: every message of the call SIPp
	// sent and received, and why it aborted the call.
	debug string
}

// sippFailedCalls reads the -trace_calldebug files of p, in the order
// SIPp dumped them.
func sippFailedCalls(p *Proc) []failedCall {
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_calldebug.log"))
	var out []failedCall
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		out = append(out, parseCallDebug(string(b))...)
	}
	return out
}

func parseCallDebug(s string) []failedCall {
	idx := reCallDebug.FindAllStringSubmatchIndex(s, -1)
	out := make([]failedCall, 0, len(idx))
	for i, m := range idx {
		end := len(s)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		block := strings.TrimRight(s[m[0]:end], "-\n")
		out = append(out, failedCall{callID: s[m[2]:m[3]], debug: block})
	}
	return out
}

// sippErrors returns the events of p's -trace_err files that name callID.
func sippErrors(p *Proc, callID string) []string {
	files, _ := filepath.Glob(filepath.Join(p.Dir, "*_errors.log"))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		s := string(b)
		starts := reErrEvent.FindAllStringIndex(s, -1)
		for i, st := range starts {
			end := len(s)
			if i+1 < len(starts) {
				end = starts[i+1][0]
			}
			if ev := s[st[0]:end]; strings.Contains(ev, callID) {
				out = append(out, strings.TrimRight(ev, "'\n"))
			}
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

// FailedCalls reports the calls SIPp process p counted failed, at most
// maxCalls of them: each call's Call-ID, SIPp's unexpected-message events
// for it, the last perCall bytes of its messages as SIPp sent and received
// them, and the lines of the lab's other logs (hapbx's, Asterisk's) that
// name the Call-ID. "" when p dumped no failed call.
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
		for _, e := range sippErrors(p, c.callID) {
			b.WriteString("-- SIPp error: " + tail(e, perCall/4) + "\n")
		}
		fmt.Fprintf(&b, "-- its messages (SIPp -trace_calldebug, the last %d bytes):\n%s\n", perCall, tail(c.debug, perCall))
		if logs := l.logLines(c.callID, p, 40); logs != "" {
			b.WriteString("-- the lab's logs naming it:\n" + logs)
		} else {
			b.WriteString("-- no lab log names it\n")
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
