package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// kvFSM is the raft state machine behind Publish/Get: a small replicated map for
// decisions the leader takes (e.g. the active backend). It is for a handful of keys, not
// for bulk state (use RegisterState for that).
type kvFSM struct {
	mu sync.RWMutex
	kv map[string][]byte
}

type kvCommand struct {
	Key   string `json:"k"`
	Value []byte `json:"v"`
}

func newKVFSM() *kvFSM { return &kvFSM{kv: map[string][]byte{}} }

func (f *kvFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var c kvCommand
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("kv: bad log entry %d: %w", l.Index, err)
	}
	f.mu.Lock()
	f.kv[c.Key] = c.Value
	f.mu.Unlock()
	return nil
}

func (f *kvFSM) get(key string) ([]byte, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.kv[key]
	return append([]byte(nil), v...), ok
}

func (f *kvFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := json.Marshal(f.kv)
	if err != nil {
		return nil, err
	}
	return kvSnapshot(b), nil
}

func (f *kvFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	m := map[string][]byte{}
	if err := json.NewDecoder(rc).Decode(&m); err != nil {
		return fmt.Errorf("kv: restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.kv = m
	f.mu.Unlock()
	return nil
}

type kvSnapshot []byte

func (s kvSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s kvSnapshot) Release() {}
