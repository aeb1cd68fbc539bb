package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// sipProbe sends one OPTIONS to t on a socket of its own and returns the
// final status code. Every probe owns its socket and deadline, so a lost or
// stuck probe never delays the next one. On UDP the socket is connected, so
// the ICMP port-unreachable of a killed backend surfaces at once as
// ECONNREFUSED instead of as a timeout.
func sipProbe(ctx context.Context, t Target, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	tr := t.transport()
	var d net.Dialer
	conn, err := d.DialContext(ctx, tr, t.Address)
	if err != nil {
		return 0, probeErr(err)
	}
	defer conn.Close()
	// Unblock reads when the caller's context ends before the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	callID := sip.GenerateTagN(16) + "@hapbx"
	req := buildOptions(t.Address, tr, conn.LocalAddr().String(), callID)
	if tr == "tcp" {
		return sipProbeStream(conn, req, callID, deadline)
	}
	return sipProbeDatagram(conn, req, callID, deadline, timeout)
}

func buildOptions(target, transport, local, callID string) []byte {
	var b strings.Builder
	b.WriteString("OPTIONS sip:" + target + " SIP/2.0\r\n")
	b.WriteString("Via: SIP/2.0/" + strings.ToUpper(transport) + " " + local + ";branch=" + sip.GenerateBranch() + ";rport\r\n")
	b.WriteString("Max-Forwards: 70\r\n")
	b.WriteString("From: <sip:hapbx@" + local + ">;tag=" + sip.GenerateTagN(10) + "\r\n")
	b.WriteString("To: <sip:" + target + ">\r\n")
	b.WriteString("Call-ID: " + callID + "\r\n")
	b.WriteString("CSeq: 1 OPTIONS\r\n")
	b.WriteString("Contact: <sip:hapbx@" + local + ";transport=" + transport + ">\r\n")
	b.WriteString("Accept: application/sdp\r\n")
	b.WriteString("User-Agent: hapbx-health\r\n")
	b.WriteString("Content-Length: 0\r\n\r\n")
	return []byte(b.String())
}

// finalAnswer returns the status code of msg when it is the final response
// to our OPTIONS, or 0.
func finalAnswer(msg sip.Message, callID string) int {
	res, ok := msg.(*sip.Response)
	if !ok || res.StatusCode < 200 {
		return 0
	}
	if cid := res.CallID(); cid == nil || string(*cid) != callID {
		return 0
	}
	if cs := res.CSeq(); cs == nil || cs.MethodName != sip.OPTIONS {
		return 0
	}
	return res.StatusCode
}

func sipProbeDatagram(conn net.Conn, req []byte, callID string, deadline time.Time, timeout time.Duration) (int, error) {
	// Retransmit within the timeout (like Timer E, scaled to the probe) so a
	// single lost datagram does not count as a failed probe.
	rto := timeout / 4
	buf := make([]byte, 65535)
	for {
		if _, err := conn.Write(req); err != nil {
			return 0, probeErr(err)
		}
		next := time.Now().Add(rto)
		if next.After(deadline) {
			next = deadline
		}
		rto *= 2
		_ = conn.SetReadDeadline(next)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline) {
					break // retransmit
				}
				return 0, probeErr(err)
			}
			msg, err := sip.ParseMessage(buf[:n])
			if err != nil {
				continue // not ours or garbage; keep waiting
			}
			if code := finalAnswer(msg, callID); code != 0 {
				return code, nil
			}
		}
	}
}

func sipProbeStream(conn net.Conn, req []byte, callID string, deadline time.Time) (int, error) {
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(req); err != nil {
		return 0, probeErr(err)
	}
	parser := sip.NewParser().NewSIPStream()
	defer parser.Close()
	buf := make([]byte, 16384)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			code := 0
			perr := parser.ParseSIPStream(buf[:n], func(m sip.Message) {
				if c := finalAnswer(m, callID); c != 0 && code == 0 {
					code = c
				}
			})
			if code != 0 {
				return code, nil
			}
			if perr != nil && !errors.Is(perr, sip.ErrParseSipPartial) {
				return 0, fmt.Errorf("parse answer: %w", perr)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, fmt.Errorf("connection closed before an answer: %w", err)
			}
			return 0, probeErr(err)
		}
	}
}

// probeErr turns deadline errors into ErrProbeTimeout, keeping others.
func probeErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer: %w", ErrProbeTimeout)
	}
	return err
}
