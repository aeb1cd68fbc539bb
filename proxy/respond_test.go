package proxy

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
)

// The response context driven by fake transactions: each case plays the
// downstream side branch by branch and checks what the caller and the
// callees were sent.

// fakeWire records what the proxy sends: client transactions it starts,
// CANCELs, and stateless responses.
type fakeWire struct {
	txs       chan *fakeClientTx
	cancels   chan *sip.Request
	stateless chan *sip.Response
}

func (w *fakeWire) TransactionRequest(_ context.Context, req *sip.Request, _ ...sipgo.ClientRequestOption) (sip.ClientTransaction, error) {
	tx := &fakeClientTx{req: req, responses: make(chan *sip.Response), done: make(chan struct{})}
	if req.IsCancel() {
		w.cancels <- req
		tx.Terminate()
		return tx, nil
	}
	w.txs <- tx
	return tx, nil
}

func (w *fakeWire) WriteRequest(*sip.Request, ...sipgo.ClientRequestOption) error { return nil }

func (w *fakeWire) WriteResponse(res *sip.Response) error {
	w.stateless <- res
	return nil
}

// fakeClientTx is one downstream branch; the test answers through it.
type fakeClientTx struct {
	req       *sip.Request
	responses chan *sip.Response
	done      chan struct{}
	once      sync.Once
	mu        sync.Mutex
	err       error
	retrans   func(*sip.Response)
}

func (tx *fakeClientTx) Terminate()                         { tx.once.Do(func() { close(tx.done) }) }
func (tx *fakeClientTx) OnTerminate(sip.FnTxTerminate) bool { return false }
func (tx *fakeClientTx) Done() <-chan struct{}              { return tx.done }
func (tx *fakeClientTx) Responses() <-chan *sip.Response    { return tx.responses }

func (tx *fakeClientTx) Err() error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.err
}

func (tx *fakeClientTx) OnRetransmission(f sip.FnTxResponse) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.retrans = f
	return true
}

func (tx *fakeClientTx) response(code int) *sip.Response {
	res := sip.NewResponseFromRequest(tx.req, code, "", nil)
	if code > 100 {
		res.To().Params.Add("tag", "callee"+tx.req.Destination())
	}
	return res
}

// answer hands the proxy a response; it blocks until the proxy takes it.
func (tx *fakeClientTx) answer(code int) { tx.responses <- tx.response(code) }

// end ends the transaction without a final response.
func (tx *fakeClientTx) end(err error) {
	tx.mu.Lock()
	tx.err = err
	tx.mu.Unlock()
	tx.Terminate()
}

// fakeServerTx is the caller's transaction.
type fakeServerTx struct {
	got       chan *sip.Response
	done      chan struct{}
	mu        sync.Mutex
	onCancel  sip.FnTxCancel
	cancelled bool
}

func (tx *fakeServerTx) Respond(res *sip.Response) error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.cancelled {
		return errors.New("transaction terminated") // sipgo has answered 487
	}
	tx.got <- res
	return nil
}

func (tx *fakeServerTx) OnCancel(f sip.FnTxCancel) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	tx.onCancel = f
	return true
}

// cancel is the caller's CANCEL.
func (tx *fakeServerTx) cancel() {
	tx.mu.Lock()
	tx.cancelled = true
	f := tx.onCancel
	tx.mu.Unlock()
	f(nil)
}

func (tx *fakeServerTx) Acks() <-chan *sip.Request          { return nil }
func (tx *fakeServerTx) Terminate()                         {}
func (tx *fakeServerTx) OnTerminate(sip.FnTxTerminate) bool { return false }
func (tx *fakeServerTx) Done() <-chan struct{}              { return tx.done }
func (tx *fakeServerTx) Err() error                         { return nil }

// harness runs one forward of an INVITE over fakes.
type harness struct {
	t        *testing.T
	p        *Proxy
	w        *fakeWire
	caller   *fakeServerTx
	finished chan struct{}
}

// wait returns the next value of c; a proxy that never sends it fails the
// test instead of hanging it.
func wait[T any](h *harness, c <-chan T, what string) T {
	h.t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		h.t.Fatalf("no %s", what)
		panic("unreachable")
	}
}

func (h *harness) branch() *fakeClientTx { h.t.Helper(); return wait(h, h.w.txs, "branch sent") }

// cancelOf checks that the next CANCEL sent downstream is for br.
func (h *harness) cancelOf(br *fakeClientTx) {
	h.t.Helper()
	c := wait(h, h.w.cancels, "CANCEL sent")
	want, _ := br.req.Via().Params.Get("branch")
	if got, _ := c.Via().Params.Get("branch"); got != want {
		h.t.Errorf("CANCEL for branch %s, want %s", got, want)
	}
}

// callerGets checks the caller's next stateful responses.
func (h *harness) callerGets(codes ...int) {
	h.t.Helper()
	for _, code := range codes {
		if res := wait(h, h.caller.got, "response to the caller"); res.StatusCode != code {
			h.t.Fatalf("caller got %d, want %d", res.StatusCode, code)
		}
	}
}

func (h *harness) statelessGets(code int) {
	h.t.Helper()
	if res := wait(h, h.w.stateless, "stateless response"); res.StatusCode != code {
		h.t.Fatalf("stateless %d, want %d", res.StatusCode, code)
	}
}

func (h *harness) ends() { h.t.Helper(); wait(h, h.finished, "end of the transaction") }

func TestResponseContext(t *testing.T) {
	be1 := target{backend: "asterisk1", addr: "127.0.0.11:5060", transport: "udp"}
	be2 := target{backend: "asterisk2", addr: "127.0.0.12:5060", transport: "udp"}
	phone1 := target{addr: "127.0.0.51:5060", transport: "udp", ruri: "sip:201@127.0.0.51"}
	phone2 := target{addr: "127.0.0.52:5060", transport: "udp", ruri: "sip:201@127.0.0.52"}
	cases := []struct {
		name    string
		targets []target
		retry   bool
		cfg     func(*Config)
		play    func(h *harness)
		// nothing is sent to the caller or downstream beyond what play checked
	}{{
		name: "180 then 200", targets: []target{be1},
		play: func(h *harness) {
			br := h.branch()
			br.answer(100)
			br.answer(180)
			br.answer(200)
			h.callerGets(180, 200)
			h.ends()
			if n := h.p.dialogs.len(); n != 1 {
				h.t.Errorf("%d dialogs tracked, want 1", n)
			}
			br.mu.Lock()
			retrans := br.retrans
			br.mu.Unlock()
			if retrans == nil {
				h.t.Fatal("no 2xx retransmission hook")
			}
			retrans(br.response(200))
			h.statelessGets(200)
		},
	}, {
		name: "503 retries the next backend", targets: []target{be1, be2}, retry: true,
		play: func(h *harness) {
			h.branch().answer(503)
			br := h.branch()
			br.answer(180)
			br.answer(200)
			h.callerGets(180, 200)
			h.ends()
			if got := testutil.ToFloat64(h.p.m.retries.WithLabelValues("asterisk1", "503")); got != 1 {
				h.t.Errorf("retries{asterisk1,503} = %v, want 1", got)
			}
		},
	}, {
		name: "no retry after a relayed 180", targets: []target{be1, be2}, retry: true,
		play: func(h *harness) {
			br := h.branch()
			br.answer(180)
			br.answer(503)
			h.callerGets(180, 503)
			h.ends()
		},
	}, {
		name: "silent backend skipped", targets: []target{be1, be2}, retry: true,
		cfg: func(c *Config) { c.HopTimeout = time.Millisecond },
		play: func(h *harness) {
			silent := h.branch()
			br := h.branch()
			wait(h, silent.done, "silent branch terminated")
			br.answer(100)
			br.answer(200)
			h.callerGets(200)
			h.ends()
		},
	}, {
		name: "486 then 200 on another branch", targets: []target{phone1, phone2},
		play: func(h *harness) {
			b1, b2 := h.branch(), h.branch()
			b1.answer(486)
			b2.answer(180)
			b2.answer(200)
			h.callerGets(180, 200)
			h.ends()
		},
	}, {
		name: "200 cancels the other branch", targets: []target{phone1, phone2},
		play: func(h *harness) {
			b1, b2 := h.branch(), h.branch()
			b1.answer(180)
			h.callerGets(180)
			b2.answer(200)
			h.callerGets(200)
			h.cancelOf(b1)
			b1.answer(487)
			h.ends()
		},
	}, {
		name: "6xx cancels the others", targets: []target{phone1, phone2},
		play: func(h *harness) {
			b1, b2 := h.branch(), h.branch()
			b1.answer(180)
			h.callerGets(180)
			b2.answer(603)
			h.cancelOf(b1)
			b1.answer(487)
			h.callerGets(603)
			h.ends()
		},
	}, {
		name: "best of the finals", targets: []target{phone1, phone2},
		play: func(h *harness) {
			b1, b2 := h.branch(), h.branch()
			b1.answer(486)
			b2.answer(503)
			h.callerGets(486)
			h.ends()
		},
	}, {
		name: "a forked 503 becomes 500", targets: []target{phone1, phone2},
		play: func(h *harness) {
			b1, b2 := h.branch(), h.branch()
			b1.answer(503)
			b2.end(sip.ErrTransactionTimeout)
			h.callerGets(500)
			h.ends()
		},
	}, {
		name: "CANCEL crossing a 200", targets: []target{be1},
		play: func(h *harness) {
			br := h.branch()
			br.answer(180)
			h.callerGets(180)
			h.caller.cancel()
			h.cancelOf(br)
			br.answer(200)
			h.statelessGets(200)
			h.ends()
		},
	}, {
		name: "CANCEL cancels every branch", targets: []target{phone1, phone2},
		play: func(h *harness) {
			b1, b2 := h.branch(), h.branch()
			b1.answer(180)
			h.callerGets(180)
			h.caller.cancel()
			h.cancelOf(b1)
			b2.answer(180) // its first response: now it may be cancelled
			h.cancelOf(b2)
			b1.answer(487)
			b2.answer(487)
			h.ends()
		},
	}, {
		name: "Timer C", targets: []target{be1},
		cfg: func(c *Config) { c.TimerC = time.Millisecond },
		play: func(h *harness) {
			br := h.branch()
			br.answer(180)
			h.callerGets(180)
			h.cancelOf(br)
			br.answer(487)
			h.callerGets(487)
			h.ends()
			if got := testutil.ToFloat64(h.p.m.timerC); got != 1 {
				h.t.Errorf("timer_c_total = %v, want 1", got)
			}
		},
	}, {
		name: "Timer C on a fork, callee gone", targets: []target{phone1, phone2},
		cfg: func(c *Config) { c.TimerC = time.Millisecond },
		play: func(h *harness) {
			h.p.cancelGuard = time.Millisecond
			b1, b2 := h.branch(), h.branch()
			b1.answer(180)
			h.callerGets(180)
			h.cancelOf(b1)
			h.callerGets(408)
			h.ends()
			wait(h, b1.done, "ringing branch terminated")
			wait(h, b2.done, "silent branch terminated")
		},
	}, {
		name: "drain", targets: []target{be1},
		play: func(h *harness) {
			br := h.branch()
			br.answer(180)
			h.callerGets(180)
			h.p.abortOnce.Do(func() { close(h.p.abort) })
			h.cancelOf(br)
			h.callerGets(503)
			h.ends()
		},
	}, {
		name: "transaction timeout", targets: []target{be1},
		play: func(h *harness) {
			br := h.branch()
			br.answer(100)
			br.end(sip.ErrTransactionTimeout)
			h.callerGets(408)
			h.ends()
		},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Listen, cfg.Advertise, cfg.NoBackendWait = []string{"udp://127.0.0.1:5060"}, "127.0.0.1", 0
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			p, err := New(cfg, []Backend{{Name: "asterisk1", Address: be1.addr, Transport: "udp"}, {Name: "asterisk2", Address: be2.addr, Transport: "udp"}},
				nil, zaptest.NewLogger(t), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			w := &fakeWire{txs: make(chan *fakeClientTx, 8), cancels: make(chan *sip.Request, 8), stateless: make(chan *sip.Response, 8)}
			p.wire = w
			h := &harness{t: t, p: p, w: w, caller: &fakeServerTx{got: make(chan *sip.Response, 8), done: make(chan struct{})}, finished: make(chan struct{})}
			req := parseRequest(t, "INVITE", "caller", "")
			req.SetSource("127.0.0.9:5060")
			go func() {
				defer close(h.finished)
				p.forward(req, h.caller, slices.Clone(tc.targets), tc.retry, nil)
			}()
			h.callerGets(100) // the proxy's own Trying
			tc.play(h)
			select {
			case res := <-h.caller.got:
				t.Errorf("caller also got %d", res.StatusCode)
			case c := <-w.cancels:
				t.Errorf("also a CANCEL to %s", c.Destination())
			case tx := <-w.txs:
				t.Errorf("also a branch to %s", tx.req.Destination())
			default:
			}
		})
	}
}
