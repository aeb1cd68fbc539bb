package cluster

import (
	"bytes"
	"testing"

	"go.uber.org/zap/zapcore"
)

func TestChunkRoundTrip(t *testing.T) {
	var recs [][]byte
	for i := 0; i < 10000; i++ {
		recs = append(recs, bytes.Repeat([]byte{byte(i)}, 300+i%7))
	}
	recs = append(recs, []byte{})
	chunks := encodeChunks("registrar", recs)
	if len(chunks) < 3 {
		t.Fatalf("%d chunks for 3 MB", len(chunks))
	}
	var got [][]byte
	for _, c := range chunks {
		if len(c) > syncChunkBytes+64 {
			t.Fatalf("chunk of %d bytes", len(c))
		}
		name, rs, err := decodeMessage(c)
		if err != nil || name != "registrar" {
			t.Fatalf("decode: %q %v", name, err)
		}
		got = append(got, rs...)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d records back, want %d", len(got), len(recs))
	}
	for i := range recs {
		if !bytes.Equal(got[i], recs[i]) {
			t.Fatalf("record %d differs", i)
		}
	}
	name, rs, err := decodeMessage(encodeRecord("media", []byte("x")))
	if err != nil || name != "media" || len(rs) != 1 || string(rs[0]) != "x" {
		t.Fatalf("record: %q %q %v", name, rs, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, b := range [][]byte{nil, {1}, {1, 0}, {1, 5, 'a'}, {2, 1, 'a'}, {2, 1, 'a', 0, 0, 0, 1},
		{2, 1, 'a', 0, 0, 0, 1, 0, 0, 0, 9, 'x'}, {2, 1, 'a', 0, 0, 0, 0, 7}, {9, 1, 'a'}, {2, 1, 'a', 0xff, 0xff, 0xff, 0xff}} {
		if _, _, err := decodeMessage(b); err == nil {
			t.Errorf("%v accepted", b)
		}
	}
}

// FuzzDecodeMessage: state messages come from the network (after decryption by
// memberlist, but a peer may be buggy): never panic, never alias past the input.
func FuzzDecodeMessage(f *testing.F) {
	f.Add(encodeRecord("r", []byte("hello")))
	for _, c := range encodeChunks("r", [][]byte{[]byte("a"), []byte("bc")}) {
		f.Add(c)
	}
	f.Add([]byte{2, 1, 'a', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, recs, err := decodeMessage(b)
		if err != nil {
			return
		}
		if name == "" {
			t.Fatal("empty name accepted")
		}
		total := 0
		for _, r := range recs {
			total += len(r)
		}
		if total > len(b) {
			t.Fatalf("records total %d > input %d", total, len(b))
		}
		if b[0] == msgChunk {
			again := encodeChunks(name, recs)
			if len(recs) > 0 && (len(again) != 1 || !bytes.Equal(again[0], b)) {
				t.Fatalf("re-encoding differs")
			}
		}
	})
}

func TestParseLogLine(t *testing.T) {
	cases := []struct {
		in   string
		lvl  zapcore.Level
		msg  string
		hint bool
	}{
		{"2026/01/01 00:00:00 [WARN] memberlist: Refuting a suspect message", zapcore.WarnLevel, "memberlist: Refuting a suspect message", false},
		{"2026-01-01T00:00:00.000Z [INFO]  raft: entering follower state", zapcore.InfoLevel, "raft: entering follower state", false},
		{"2026/01/01 00:00:00 [ERR] memberlist: Decrypt packet failed: No installed keys could decrypt the message", zapcore.ErrorLevel, "memberlist: Decrypt packet failed: No installed keys could decrypt the message", true},
		{"[DEBUG] memberlist: Stream connection", zapcore.DebugLevel, "memberlist: Stream connection", false},
		{"no level here", zapcore.InfoLevel, "no level here", false},
		{"[odd", zapcore.InfoLevel, "[odd", false},
	}
	for _, tc := range cases {
		lvl, msg := parseLogLine(tc.in)
		if lvl != tc.lvl || msg != tc.msg || isKeyMismatch(msg) != tc.hint {
			t.Errorf("%q -> %v %q %v", tc.in, lvl, msg, isKeyMismatch(msg))
		}
	}
}

func encodeRecord(name string, rec []byte) []byte {
	b := append([]byte{msgRecord, byte(len(name))}, name...)
	return append(b, rec...)
}
