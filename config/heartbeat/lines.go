package heartbeat

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// Line is one directive of a Heartbeat file: its words without the
// comment, and where it was.
type Line struct {
	File  string
	Num   int
	Words []string
}

// At is "FILE:LINE", the place findings name.
func (l Line) At() string { return l.File + ":" + strconv.Itoa(l.Num) }

// Text is the directive as written (words joined by one space).
func (l Line) Text() string { return strings.Join(l.Words, " ") }

// parseLines splits a Heartbeat file (ha.cf, authkeys, haresources) into
// directives: # starts a comment, blank lines are skipped and a trailing
// backslash continues a line (haresources allows it); a continued
// directive keeps the number of its first line.
func parseLines(name string, data []byte) []Line {
	var out []Line
	var cur *Line
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		text = strings.TrimSpace(text)
		cont := strings.HasSuffix(text, `\`)
		text = strings.TrimSuffix(text, `\`)
		if cur == nil {
			cur = &Line{File: name, Num: n}
		}
		cur.Words = append(cur.Words, strings.Fields(text)...)
		if cont {
			continue
		}
		if len(cur.Words) > 0 {
			out = append(out, *cur)
		}
		cur = nil
	}
	if cur != nil && len(cur.Words) > 0 {
		out = append(out, *cur)
	}
	return out
}
