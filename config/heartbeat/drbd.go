package heartbeat

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// drbdStmt is one statement of drbd.conf: its words and, for a section
// ("resource r0 { ... }"), the statements inside it.
type drbdStmt struct {
	File  string
	Line  int
	Words []string
	Body  []*drbdStmt // nil for a plain "key value;" statement
}

func (s *drbdStmt) at() string { return fmt.Sprintf("%s:%d", s.File, s.Line) }

// DRBDResource is what the import needs of one resource of drbd.conf.
type DRBDResource struct {
	Name     string
	At       string // FILE:LINE of "resource NAME"
	Protocol string // A, B or C; "" when drbd.conf does not say (DRBD's default is C)
	// Hosts are the "on NAME { ... }" sections, by host name.
	Hosts map[string]DRBDHost
}

// DRBDHost is one "on NAME { ... }" section.
type DRBDHost struct {
	At       string
	Device   string
	Disk     string
	Address  netip.Addr // the replication link's address: the node's address
	MetaDisk string
}

// ParseDRBD reads drbd.conf at path, following include statements
// (globs, relative to the including file), and returns its resources by
// name.
func ParseDRBD(path string) (map[string]*DRBDResource, error) {
	stmts, err := readDRBD(path, 0)
	if err != nil {
		return nil, err
	}
	common := protocolIn(stmts, "common")
	out := map[string]*DRBDResource{}
	for _, s := range stmts {
		if len(s.Words) < 2 || s.Words[0] != "resource" || s.Body == nil {
			continue
		}
		r := &DRBDResource{Name: s.Words[1], At: s.at(), Protocol: common, Hosts: map[string]DRBDHost{}}
		if p := protocolOf(s.Body); p != "" {
			r.Protocol = p
		}
		// DRBD 8.4 allows device, disk and meta-disk at resource level,
		// shared by the "on" sections.
		shared := hostOf(s, s.Body, DRBDHost{})
		for _, h := range s.Body {
			if len(h.Words) >= 2 && h.Words[0] == "on" && h.Body != nil {
				host := hostOf(h, h.Body, shared)
				for _, name := range h.Words[1:] { // "on a b { ... }" (floating pairs) names several
					r.Hosts[name] = host
				}
			}
		}
		out[r.Name] = r
	}
	return out, nil
}

func protocolIn(stmts []*drbdStmt, section string) string {
	for _, s := range stmts {
		if len(s.Words) == 1 && s.Words[0] == section && s.Body != nil {
			return protocolOf(s.Body)
		}
	}
	return ""
}

// protocolOf finds "protocol X;" directly in body or in its net section.
func protocolOf(body []*drbdStmt) string {
	for _, s := range body {
		switch {
		case len(s.Words) == 2 && s.Words[0] == "protocol" && s.Body == nil:
			return strings.ToUpper(s.Words[1])
		case len(s.Words) == 1 && s.Words[0] == "net" && s.Body != nil:
			if p := protocolOf(s.Body); p != "" {
				return p
			}
		}
	}
	return ""
}

func hostOf(sec *drbdStmt, body []*drbdStmt, h DRBDHost) DRBDHost {
	h.At = sec.at()
	for _, s := range body {
		if s.Body != nil {
			// DRBD 9: volume 0 { device ...; disk ...; } - the first volume.
			if len(s.Words) == 2 && s.Words[0] == "volume" && h.Device == "" {
				v := hostOf(sec, s.Body, DRBDHost{})
				h.Device, h.Disk, h.MetaDisk = v.Device, v.Disk, v.MetaDisk
			}
			continue
		}
		if len(s.Words) < 2 {
			continue
		}
		switch s.Words[0] {
		case "device":
			h.Device = drbdDevice(s.Words[1:])
		case "disk":
			h.Disk = s.Words[1]
		case "meta-disk":
			h.MetaDisk = strings.Join(s.Words[1:], " ")
		case "address":
			// address [ipv4|ipv6|ssocks|sdp] ADDR:PORT
			a := s.Words[len(s.Words)-1]
			if i := strings.LastIndexByte(a, ':'); i > 0 {
				a = a[:i]
			}
			if ip, err := netip.ParseAddr(strings.Trim(a, "[]")); err == nil {
				h.Address = ip
			}
		}
	}
	return h
}

// drbdDevice reads "device /dev/drbd0", "device /dev/drbd0 minor 0" and
// "device minor 0".
func drbdDevice(w []string) string {
	if w[0] == "minor" && len(w) > 1 {
		return "/dev/drbd" + w[1]
	}
	return w[0]
}

// readDRBD parses one file; depth bounds include loops.
func readDRBD(path string, depth int) ([]*drbdStmt, error) {
	if depth > 8 {
		return nil, fmt.Errorf("%s: includes nested deeper than 8", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("drbd.conf: %w", err)
	}
	toks, err := drbdTokens(path, string(data))
	if err != nil {
		return nil, err
	}
	stmts, _, err := drbdParse(path, toks, false)
	if err != nil {
		return nil, err
	}
	var out []*drbdStmt
	for _, s := range stmts {
		if len(s.Words) == 2 && s.Words[0] == "include" && s.Body == nil {
			pattern := s.Words[1]
			if !filepath.IsAbs(pattern) {
				pattern = filepath.Join(filepath.Dir(path), pattern)
			}
			files, err := filepath.Glob(pattern)
			if err != nil {
				return nil, fmt.Errorf("%s: include %q: %w", s.at(), s.Words[1], err)
			}
			sort.Strings(files)
			for _, f := range files {
				inc, err := readDRBD(f, depth+1)
				if err != nil {
					return nil, err
				}
				out = append(out, inc...)
			}
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

type drbdToken struct {
	text string
	line int
}

// drbdTokens splits drbd.conf into words, quoted strings and the
// punctuation { } ;, dropping # comments.
func drbdTokens(path, src string) ([]drbdToken, error) {
	var out []drbdToken
	line := 1
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
		case c == '{' || c == '}' || c == ';':
			out = append(out, drbdToken{string(c), line})
			i++
		case c == '"':
			j := strings.IndexByte(src[i+1:], '"')
			if j < 0 {
				return nil, fmt.Errorf("%s:%d: unterminated string", path, line)
			}
			out = append(out, drbdToken{src[i+1 : i+1+j], line})
			line += strings.Count(src[i+1:i+1+j], "\n")
			i += j + 2
		default:
			j := i
			for j < len(src) && !strings.ContainsRune(" \t\r\n{};#\"", rune(src[j])) {
				j++
			}
			out = append(out, drbdToken{src[i:j], line})
			i = j
		}
	}
	return out, nil
}

// drbdParse reads statements until the end of toks or, inside a section,
// its closing brace; it returns the tokens after that brace.
func drbdParse(path string, toks []drbdToken, inside bool) ([]*drbdStmt, []drbdToken, error) {
	var out []*drbdStmt
	var cur *drbdStmt
	for len(toks) > 0 {
		t := toks[0]
		toks = toks[1:]
		switch t.text {
		case ";":
			if cur != nil {
				out = append(out, cur)
				cur = nil
			}
		case "{":
			if cur == nil {
				cur = &drbdStmt{File: path, Line: t.line}
			}
			body, rest, err := drbdParse(path, toks, true)
			if err != nil {
				return nil, nil, err
			}
			cur.Body = append([]*drbdStmt{}, body...)
			out = append(out, cur)
			cur, toks = nil, rest
		case "}":
			if !inside {
				return nil, nil, fmt.Errorf("%s:%d: unbalanced }", path, t.line)
			}
			if cur != nil {
				return nil, nil, fmt.Errorf("%s:%d: %q lacks its ;", path, cur.Line, strings.Join(cur.Words, " "))
			}
			return out, toks, nil
		default:
			if cur == nil {
				cur = &drbdStmt{File: path, Line: t.line}
			}
			cur.Words = append(cur.Words, t.text)
		}
	}
	if inside {
		return nil, nil, fmt.Errorf("%s: missing }", path)
	}
	if cur != nil {
		return nil, nil, fmt.Errorf("%s:%d: %q lacks its ;", path, cur.Line, strings.Join(cur.Words, " "))
	}
	return out, nil, nil
}
