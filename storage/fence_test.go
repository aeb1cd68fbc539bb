package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCommandFencer(t *testing.T) {
	ctx := context.Background()
	mark := filepath.Join(t.TempDir(), "fenced")
	if err := (CommandFencer{Command: "echo off > " + mark, Timeout: 2 * time.Second}).Fence(ctx); err != nil {
		t.Fatalf("exit 0: %v", err)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Fatalf("command not run: %v", err)
	}
	err := (CommandFencer{Command: "echo 'BMC unreachable' >&2; exit 3", Timeout: 2 * time.Second}).Fence(ctx)
	if !errors.Is(err, ErrFenceFailed) || !strings.Contains(err.Error(), "BMC unreachable") {
		t.Fatalf("exit 3: %v, want ErrFenceFailed with the command's output", err)
	}
	// A hung power switch: the timeout decides, and kills the whole group.
	t0 := time.Now()
	err = (CommandFencer{Command: "sleep 30 & sleep 30", Timeout: 200 * time.Millisecond}).Fence(ctx)
	if !errors.Is(err, ErrFenceFailed) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung command: %v, want ErrFenceFailed and DeadlineExceeded", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("hung command held the fencer %s", d)
	}
}

func TestNewFencer(t *testing.T) {
	if _, ok := NewFencer(FenceConfig{Command: "true"}, nil).(CommandFencer); !ok {
		t.Fatal("command configured: want CommandFencer")
	}
	f, ok := NewFencer(FenceConfig{Timeout: time.Second, SafetyDelay: 2 * time.Second}, nil).(PeerDisconnectFencer)
	if !ok || f.SafetyDelay != 2*time.Second || f.Timeout != time.Second {
		t.Fatalf("no command: want PeerDisconnectFencer with the delays, got %#v", f)
	}
}
