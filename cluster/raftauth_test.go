package cluster

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestRaftAuthLayer(t *testing.T) {
	k1 := []byte("0123456789abcdef")
	k2 := []byte("fedcba9876543210")
	srv, err := newAuthLayer("127.0.0.1:0", nil, [][]byte{k1, k2}, k1)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := make(chan string, 4)
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 5)
				if _, err := io.ReadFull(c, b); err != nil {
					got <- "error: " + err.Error()
					return
				}
				got <- string(b)
			}()
		}
	}()
	addr := raft.ServerAddress(srv.Addr().String())
	expect := func(want string) {
		t.Helper()
		select {
		case g := <-got:
			if (want == "error" && len(g) < 6) || (want != "error" && g != want) {
				t.Fatalf("server got %q, want %s", g, want)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("server saw nothing")
		}
	}

	// Same key; and, during a rotation, a peer that already encrypts with the new key
	// (its primary is our secondary) while still knowing the old one.
	for _, ring := range [][][]byte{{k1}, {k2, k1}} {
		cli, _ := newAuthLayer("127.0.0.1:0", nil, ring, ring[0])
		c, err := cli.Dial(addr, time.Second)
		if err != nil {
			t.Fatalf("dial with a known key: %v", err)
		}
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		expect("hello")
		c.Close()
		cli.Close()
	}

	// Unknown key: the dialer refuses the server's proof, the server the dialer's.
	bad, _ := newAuthLayer("127.0.0.1:0", nil, [][]byte{[]byte("XXXXXXXXXXXXXXXX")}, []byte("XXXXXXXXXXXXXXXX"))
	defer bad.Close()
	if _, err := bad.Dial(addr, time.Second); !errors.Is(err, errAuth) {
		t.Fatalf("dial with an unknown key: %v, want errAuth", err)
	}
	expect("error")

	// A plain TCP client sending raft bytes straight away is cut off.
	raw, err := net.Dial("tcp", string(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = raw.Write([]byte("\x00\x01garbage-without-handshake"))
	expect("error")
}
