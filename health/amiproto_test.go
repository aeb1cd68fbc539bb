package health

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadAMIMessage(t *testing.T) {
	in := "\r\nResponse: Success\r\nActionID: 7\r\nPing: Pong\r\nTimestamp: 1.5\r\n\r\n" +
		"Event: FullyBooted\nStatus: Fully Booted\n\n" +
		"Response: Follows\r\nraw output line\r\nKey:NoSpace\r\n\r\n" +
		"Response: cut"
	br := bufio.NewReader(strings.NewReader(in))
	m, err := ReadAMIMessage(br)
	if err != nil || m.Get("response") != "Success" || m.Get("ACTIONID") != "7" || m.Get("Ping") != "Pong" || len(m.Fields) != 4 {
		t.Fatalf("first: %+v %v", m, err)
	}
	m, err = ReadAMIMessage(br)
	if err != nil || m.Get("Event") != "FullyBooted" {
		t.Fatalf("second (bare LF): %+v %v", m, err)
	}
	m, err = ReadAMIMessage(br)
	if err != nil || m.Fields[1].Key != "" || m.Fields[1].Value != "raw output line" || m.Get("Key") != "NoSpace" {
		t.Fatalf("third: %+v %v", m, err)
	}
	if _, err = ReadAMIMessage(br); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut message: %v", err)
	}
	if _, err = ReadAMIMessage(bufio.NewReader(strings.NewReader(""))); !errors.Is(err, io.EOF) {
		t.Fatalf("empty stream: %v", err)
	}
}

func TestReadAMIMessageLimits(t *testing.T) {
	long := "Key: " + strings.Repeat("x", amiMaxLine) + "\r\n\r\n"
	if _, err := ReadAMIMessage(bufio.NewReader(strings.NewReader(long))); !errors.Is(err, ErrAMIProtocol) {
		t.Errorf("long line: %v", err)
	}
	many := strings.Repeat("K: v\r\n", amiMaxFields+1) + "\r\n"
	if _, err := ReadAMIMessage(bufio.NewReader(strings.NewReader(many))); !errors.Is(err, ErrAMIProtocol) {
		t.Errorf("many lines: %v", err)
	}
}

func TestAppendAMIMessage(t *testing.T) {
	b, err := appendAMIMessage(nil, AMIField{"Action", "Login"}, AMIField{"Secret", "s3"})
	if err != nil || string(b) != "Action: Login\r\nSecret: s3\r\n\r\n" {
		t.Fatalf("%q %v", b, err)
	}
	if _, err := appendAMIMessage(nil, AMIField{"Secret", "x\r\nAction: Logoff"}); !errors.Is(err, ErrAMIProtocol) {
		t.Fatalf("injection accepted: %v", err)
	}
}

// FuzzReadAMIMessage: whatever a manager (or an impostor on its port)
// sends, the parser returns without panicking, within its limits, and what
// it parsed survives a write/read round trip.
func FuzzReadAMIMessage(f *testing.F) {
	f.Add([]byte("Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n"))
	f.Add([]byte("Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n"))
	f.Add([]byte("Asterisk Call Manager/5.0.2\r\n"))
	f.Add([]byte("\n\n\nK:\n:v\n\n"))
	f.Add([]byte("Response: Follows\r\nPrivilege: Command\r\nline one\r\n--END COMMAND--\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(strings.NewReader(string(data)))
		for range 64 {
			m, err := ReadAMIMessage(br)
			if err != nil {
				return
			}
			if len(m.Fields) == 0 || len(m.Fields) > amiMaxFields {
				t.Fatalf("message with %d fields", len(m.Fields))
			}
			var keep []AMIField
			for _, fl := range m.Fields {
				if fl.Key != "" && fl.Value != "" {
					keep = append(keep, fl)
				}
			}
			if len(keep) == 0 {
				continue
			}
			wire, err := appendAMIMessage(nil, keep...)
			if err != nil {
				continue // a bare CR inside a line: readable, not writable
			}
			back, err := ReadAMIMessage(bufio.NewReader(strings.NewReader(string(wire))))
			if err != nil || len(back.Fields) != len(keep) {
				t.Fatalf("round trip of %q: %+v %v", wire, back, err)
			}
			for i := range keep {
				if back.Fields[i] != keep[i] {
					t.Fatalf("round trip field %d: %+v != %+v", i, back.Fields[i], keep[i])
				}
			}
		}
	})
}
