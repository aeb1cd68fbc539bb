package registrar

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// storeFile is the bbolt file inside data_dir.
const storeFile = "registrar.db"

var bucketRecords = []byte("records")

// storedRecord is a record with the key it was found under.
type storedRecord struct {
	key string
	rec Record
}

// pendingOp is the latest state of one key waiting to be written.
type pendingOp struct {
	rec Record
	del bool
}

// store persists records in bbolt. Writes are queued in a map keyed by
// record key, so the queue is bounded by the number of bindings and a burst
// of refreshes of one binding costs one write; a flusher writes the whole
// queue in one transaction.
type store struct {
	path string
	db   *bolt.DB

	mu      sync.Mutex
	pending map[string]pendingOp
	kick    chan struct{}

	flushMu sync.Mutex // one flush at a time, Close included
}

// corruptError says the file could not be used and was moved aside.
type corruptError struct {
	path, movedTo string
	reason        error
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("registrar store %s is damaged (%v); moved to %s, starting empty", e.path, e.reason, e.movedTo)
}

func (e *corruptError) Unwrap() error { return e.reason }

// openStore opens or creates the store. A file that exists but cannot be
// read as a bbolt database is moved aside and replaced by an empty one; the
// returned corruptError (non-nil with a usable store) tells the caller.
func openStore(dir string, now time.Time) (*store, *corruptError, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("registrar store: create data_dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, storeFile)
	_, statErr := os.Stat(path)
	existed := statErr == nil
	db, err := openBolt(path)
	var cerr *corruptError
	if err != nil {
		if !existed || !isCorruption(err) {
			return nil, nil, fmt.Errorf("registrar store: open %s: %w", path, err)
		}
		cerr, err = moveAside(path, err, now)
		if err != nil {
			return nil, nil, err
		}
		if db, err = openBolt(path); err != nil {
			return nil, nil, fmt.Errorf("registrar store: open %s after moving the damaged file aside: %w", path, err)
		}
	}
	s := &store{path: path, db: db, pending: make(map[string]pendingOp), kick: make(chan struct{}, 1)}
	return s, cerr, nil
}

func openBolt(path string) (db *bolt.DB, err error) {
	// bbolt panics on some damaged pages (the freelist is read in Open).
	// The file handle it opened then leaks, once; the file is moved aside.
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("bbolt panic: %v", p)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketRecords)
		return err
	}); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// isCorruption separates a damaged file from problems moving it would not
// fix (locked by another process, no permission, disk full).
func isCorruption(err error) bool {
	switch {
	case errors.Is(err, berrors.ErrTimeout), errors.Is(err, fs.ErrPermission),
		errors.Is(err, fs.ErrNotExist), errors.Is(err, berrors.ErrDatabaseReadOnly):
		return false
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && (pe.Op == "open" || pe.Op == "flock") {
		return false
	}
	return true
}

func moveAside(path string, reason error, now time.Time) (*corruptError, error) {
	to := path + ".corrupt-" + now.UTC().Format("20060102T150405.000000000Z")
	if err := os.Rename(path, to); err != nil {
		return nil, fmt.Errorf("registrar store: %s is damaged (%v) and could not be moved aside: %w", path, reason, err)
	}
	return &corruptError{path: path, movedTo: to, reason: reason}, nil
}

// load reads every record. Records that do not decode are returned as bad
// keys with their errors. A panic inside bbolt (it panics on damaged pages)
// is turned into an error.
func (s *store) load() (recs []storedRecord, bad map[string]error, err error) {
	bad = make(map[string]error)
	defer func() {
		if p := recover(); p != nil {
			recs, bad, err = nil, nil, fmt.Errorf("read %s: bbolt panic: %v", s.path, p)
		}
	}()
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords)
		if b == nil {
			return fmt.Errorf("bucket %q missing", bucketRecords)
		}
		return b.ForEach(func(k, v []byte) error {
			r, derr := DecodeRecord(v)
			if derr != nil {
				bad[string(k)] = derr
				return nil
			}
			recs = append(recs, storedRecord{key: string(k), rec: r})
			return nil
		})
	})
	return recs, bad, err
}

// enqueue queues writes and wakes the flusher; it never blocks on disk.
func (s *store) enqueue(ops map[string]pendingOp) {
	if len(ops) == 0 {
		return
	}
	s.mu.Lock()
	for k, op := range ops {
		s.pending[k] = op
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *store) pendingLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// flush writes everything queued in one transaction. On failure the batch
// is put back unless a newer state of the same key was queued meanwhile.
func (s *store) flush() (int, error) {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	batch := s.pending
	if len(batch) == 0 {
		s.mu.Unlock()
		return 0, nil
	}
	s.pending = make(map[string]pendingOp, len(batch))
	s.mu.Unlock()

	err := s.write(batch)
	if err != nil {
		s.mu.Lock()
		for k, op := range batch {
			if _, newer := s.pending[k]; !newer {
				s.pending[k] = op
			}
		}
		s.mu.Unlock()
		return 0, fmt.Errorf("registrar store: write %d records to %s: %w", len(batch), s.path, err)
	}
	return len(batch), nil
}

// write runs one transaction; bbolt panics on some damaged pages, which
// must not take the proxy down.
func (s *store) write(batch map[string]pendingOp) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("bbolt panic: %v", p)
		}
	}()
	// In key order: bbolt inserts into sorted leaves, and random order makes
	// a large batch (a joining proxy's full state) quadratic in memmove.
	keys := make([]string, 0, len(batch))
	for k := range batch {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords)
		for _, k := range keys {
			op := batch[k]
			if op.del {
				if err := b.Delete([]byte(k)); err != nil {
					return err
				}
				continue
			}
			v, err := op.rec.MarshalBinary()
			if err != nil {
				return err
			}
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *store) close() error {
	_, ferr := s.flush()
	cerr := s.db.Close()
	return errors.Join(ferr, cerr)
}
