package registrar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Version orders the changes of one binding across proxies: last writer wins.
// Time is a hybrid logical clock (Unix nanoseconds, never going backwards on
// a node and always after any version the node has merged); Node breaks ties.
type Version struct {
	Time int64  `json:"t"`
	Node string `json:"n"`
}

// Record is one replicated change of one binding, keyed by AOR and Contact.
// A tombstone (Deleted) carries only AOR, Contact and, in Binding.Expires,
// the time until which it must be kept to beat late copies of the binding.
type Record struct {
	Binding Binding `json:"b"`
	Deleted bool    `json:"d,omitempty"`
	Version Version `json:"v"`
}

// recordFormat is bumped when the encoding changes incompatibly.
const recordFormat = 1

type wireRecord struct {
	Format int `json:"f"`
	Record
}

// MarshalBinary encodes r for the store and for replication.
func (r Record) MarshalBinary() ([]byte, error) {
	return json.Marshal(wireRecord{Format: recordFormat, Record: r})
}

// DecodeRecord decodes and checks what MarshalBinary produced.
func DecodeRecord(data []byte) (Record, error) {
	var w wireRecord
	if err := json.Unmarshal(data, &w); err != nil {
		return Record{}, fmt.Errorf("decode registrar record: %w", err)
	}
	if w.Format != recordFormat {
		return Record{}, fmt.Errorf("decode registrar record: format %d, want %d", w.Format, recordFormat)
	}
	if err := w.Record.check(); err != nil {
		return Record{}, fmt.Errorf("decode registrar record: %w", err)
	}
	return w.Record, nil
}

func (r Record) check() error {
	if _, _, ok := splitAOR(r.Binding.AOR); !ok {
		return fmt.Errorf("bad AOR %q", r.Binding.AOR)
	}
	if r.Binding.Contact == "" {
		return fmt.Errorf("empty Contact for %s", r.Binding.AOR)
	}
	if r.Version.Node == "" || r.Version.Time <= 0 {
		return fmt.Errorf("bad version %+v for %s", r.Version, r.Binding.AOR)
	}
	if r.Binding.Expires.IsZero() {
		return fmt.Errorf("no expiry for %s", r.Binding.AOR)
	}
	return nil
}

// wins reports whether a replaces b. It is a strict total order on records
// (version, then tombstone over binding, then encoded bytes), so merging is
// a maximum: commutative, associative and idempotent.
func (a Record) wins(b Record) bool {
	if a.Version.Time != b.Version.Time {
		return a.Version.Time > b.Version.Time
	}
	if a.Version.Node != b.Version.Node {
		return a.Version.Node > b.Version.Node
	}
	if a.Deleted != b.Deleted {
		return a.Deleted
	}
	ea, _ := a.MarshalBinary()
	eb, _ := b.MarshalBinary()
	return bytes.Compare(ea, eb) > 0
}

// hlc is a hybrid logical clock; callers hold the registrar lock.
type hlc struct{ last int64 }

func (c *hlc) next(now time.Time) int64 {
	t := now.UnixNano()
	if t <= c.last {
		t = c.last + 1
	}
	c.last = t
	return t
}

func (c *hlc) observe(t int64) {
	if t > c.last {
		c.last = t
	}
}
