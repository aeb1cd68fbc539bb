package health

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Limits on what an AMI peer may send in one message.
const (
	amiMaxLine   = 8192
	amiMaxFields = 512
)

// AMIField is one "Key: Value" line of a manager message.
type AMIField struct {
	Key   string
	Value string
}

// AMIMessage is one manager message: its lines in wire order. Keys may
// repeat (Asterisk repeats Variable, for instance).
type AMIMessage struct {
	Fields []AMIField
}

// Get returns the value of the first field named key (case-insensitive,
// as Asterisk matches keys), or "".
func (m AMIMessage) Get(key string) string {
	for _, f := range m.Fields {
		if strings.EqualFold(f.Key, key) {
			return f.Value
		}
	}
	return ""
}

// ReadAMIMessage reads one message: lines up to a blank line. Leading blank
// lines are skipped. CRLF and bare LF both end a line. A line without a
// colon is kept with an empty Key (command output does that). io.EOF is
// returned only when the stream ends before any line of a message.
func ReadAMIMessage(r *bufio.Reader) (AMIMessage, error) {
	var m AMIMessage
	for {
		line, err := readAMILine(r)
		if err != nil {
			if errors.Is(err, io.EOF) && len(m.Fields) > 0 {
				return m, fmt.Errorf("message cut short after %d lines: %w", len(m.Fields), io.ErrUnexpectedEOF)
			}
			return m, err
		}
		if line == "" {
			if len(m.Fields) == 0 {
				continue
			}
			return m, nil
		}
		if len(m.Fields) >= amiMaxFields {
			return m, fmt.Errorf("message has more than %d lines: %w", amiMaxFields, ErrAMIProtocol)
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			m.Fields = append(m.Fields, AMIField{Value: line})
			continue
		}
		m.Fields = append(m.Fields, AMIField{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v)})
	}
}

// readAMILine returns one line without its line end.
func readAMILine(r *bufio.Reader) (string, error) {
	var acc []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(acc)+len(frag) > amiMaxLine {
			return "", fmt.Errorf("line longer than %d bytes: %w", amiMaxLine, ErrAMIProtocol)
		}
		switch {
		case err == nil:
			acc = append(acc, frag...)
			return string(bytes.TrimRight(acc, "\r\n")), nil
		case errors.Is(err, bufio.ErrBufferFull):
			acc = append(acc, frag...)
		default:
			if len(acc)+len(frag) > 0 && !errors.Is(err, io.EOF) {
				return "", err
			}
			if len(acc)+len(frag) > 0 {
				return "", fmt.Errorf("line without end: %w", io.ErrUnexpectedEOF)
			}
			return "", err
		}
	}
}

// appendAMIMessage appends the wire form of fields to b. Values with line
// breaks would let a value inject fields, so they are refused.
func appendAMIMessage(b []byte, fields ...AMIField) ([]byte, error) {
	for _, f := range fields {
		if strings.ContainsAny(f.Key, "\r\n:") || strings.ContainsAny(f.Value, "\r\n") {
			return b, fmt.Errorf("field %q contains a line break or a colon in its key: %w", f.Key, ErrAMIProtocol)
		}
		b = append(b, f.Key...)
		b = append(b, ": "...)
		b = append(b, f.Value...)
		b = append(b, "\r\n"...)
	}
	return append(b, "\r\n"...), nil
}
