package health

import (
	"net"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

const sippAnswer = "SIP/2.0 404 Not Found\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc;rport\r\n" +
	"From: <sip:hapbx@127.0.0.1:40000>;tag=1\r\nTo: <sip:127.0.0.77:5060>;tag=as1\r\nCall-ID: cid@hapbx\r\n" +
	"CSeq: 1 OPTIONS\r\nServer: Asterisk PBX 20.5.0\r\nContent-Length: 0\r\n\r\n"

// The stream path: a provisional answer, then the final one split across
// reads, over TCP.
func TestSIPProbeStreamSplit(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		buf := make([]byte, 4096)
		_, _ = b.Read(buf)
		trying := "SIP/2.0 100 Trying\r\nVia: SIP/2.0/TCP x;branch=z9hG4bKabc\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: cid@hapbx\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
		for _, part := range []string{trying + sippAnswer[:30], sippAnswer[30:]} {
			_, _ = b.Write([]byte(part))
		}
		b.Close()
	}()
	code, err := sipProbeStream(a, []byte("OPTIONS ...\r\n\r\n"), "cid@hapbx", time.Now().Add(time.Second))
	if err != nil || code != 404 {
		t.Fatalf("code %d err %v", code, err)
	}
}

func TestFinalAnswerMatches(t *testing.T) {
	msg, err := sip.ParseMessage([]byte(sippAnswer))
	if err != nil {
		t.Fatal(err)
	}
	if finalAnswer(msg, "cid@hapbx") != 404 {
		t.Error("own answer not taken")
	}
	if finalAnswer(msg, "other@hapbx") != 0 {
		t.Error("answer to another Call-ID taken")
	}
	req := buildOptions("127.0.0.77:5060", "udp", "127.0.0.1:40000", "cid@hapbx")
	m, err := sip.ParseMessage(req)
	if err != nil {
		t.Fatalf("our OPTIONS does not parse: %v\n%s", err, req)
	}
	if finalAnswer(m, "cid@hapbx") != 0 {
		t.Error("a request taken as an answer")
	}
}

// FuzzSIPAnswer: whatever comes back on a probe socket, datagram or
// stream, is parsed and matched without panicking.
func FuzzSIPAnswer(f *testing.F) {
	f.Add([]byte(sippAnswer), 17)
	f.Add([]byte("SIP/2.0 200 OK\r\nCall-ID: cid@hapbx\r\nCSeq: 1 OPTIONS\r\nContent-Length: 5\r\n\r\nabc"), 3)
	f.Add([]byte("OPTIONS sip:x SIP/2.0\r\n\r\n"), 0)
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		if msg, err := sip.ParseMessage(data); err == nil {
			_ = finalAnswer(msg, "cid@hapbx")
		}
		a, b := net.Pipe()
		go func() {
			buf := make([]byte, 4096)
			_, _ = b.Read(buf)
			if split < 0 {
				split = -split
			}
			if len(data) > 0 {
				split %= len(data) + 1
			} else {
				split = 0
			}
			_, _ = b.Write(data[:split])
			_, _ = b.Write(data[split:])
			b.Close()
		}()
		code, err := sipProbeStream(a, []byte("x"), "cid@hapbx", time.Now().Add(time.Second))
		a.Close()
		if err == nil && (code < 200 || code > 699) {
			t.Fatalf("code %d without error", code)
		}
	})
}
