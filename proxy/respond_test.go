package proxy

import (
	"cmp"
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
	brs      []*fakeClientTx
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

// br is the i-th branch the proxy sent, waiting for it if need be.
func (h *harness) br(i int) *fakeClientTx {
	h.t.Helper()
	for len(h.brs) <= i {
		h.brs = append(h.brs, wait(h, h.w.txs, "branch sent"))
	}
	return h.brs[i]
}

// step is one move of the downstream side or one check of what the proxy did.
type step func(h *harness)

// answer: branch i sends codes.
func answer(i int, codes ...int) step {
	return func(h *harness) {
		for _, c := range codes {
			h.br(i).answer(c)
		}
	}
}

// answerLive: branch i, which the proxy must not have ended, sends codes.
func answerLive(i int, codes ...int) step {
	return func(h *harness) {
		h.t.Helper()
		br := h.br(i)
		for _, c := range codes {
			select {
			case br.responses <- br.response(c):
			case <-br.done:
				h.t.Fatalf("branch %d ended before its %d", i, c)
			}
		}
	}
}

// suspectRecorder is the health side: the backends the proxy suspects.
type suspectRecorder chan string

func (r suspectRecorder) Suspect(backend, _ string) {
	select {
	case r <- backend:
	default:
	}
}

// onlyBackend: the router offers asterisk1 alone (a cold standby's one
// PBX); the proxy's suspicions go to h's recorder.
func onlyBackend(p *Proxy) {
	p.router, p.reporter = NewStaticRouter([]string{"asterisk1"}, false), make(suspectRecorder, 8)
	p.cfg.HopTimeout, p.cfg.NoBackendWait = time.Millisecond, 30*time.Second
}

// bothBackends: the router offers asterisk1 then asterisk2; hop_timeout
// leaves the play time to answer before a silent backend is skipped.
func bothBackends(p *Proxy) {
	p.router = NewStaticRouter([]string{"asterisk1", "asterisk2"}, false)
	p.cfg.HopTimeout = time.Second
}

// placedBy1: the router offers asterisk1 (at 127.0.0.11), which places
// the call; its health is watched every millisecond.
func placedBy1(p *Proxy) {
	p.router = NewStaticRouter([]string{"asterisk1"}, false)
	p.cfg.HopTimeout = time.Millisecond
}

// lifeRecorder is the health side of a proxy's LifeReporter: the backends
// heard from, in order.
type lifeRecorder struct {
	mu    sync.Mutex
	heard []string
}

func (r *lifeRecorder) Suspect(string, string) {}

func (r *lifeRecorder) Heard(backend string) {
	r.mu.Lock()
	r.heard = append(r.heard, backend)
	r.mu.Unlock()
}

// hearing: the proxy reports its backends' answers to a lifeRecorder.
func hearing(p *Proxy) { p.reporter = &lifeRecorder{} }

// heardFrom: the proxy reported exactly these answers as evidence of life.
func heardFrom(backends ...string) step {
	return func(h *harness) {
		r := h.p.reporter.(*lifeRecorder)
		r.mu.Lock()
		defer r.mu.Unlock()
		if !slices.Equal(r.heard, backends) {
			h.t.Errorf("heard from %v, want %v", r.heard, backends)
		}
	}
}

// pause lets the proxy's timers (hop_timeout) run meanwhile.
func pause(d time.Duration) step { return func(*harness) { time.Sleep(d) } }

// suspects: the proxy reports backend to health.
func suspects(backend string) step {
	return func(h *harness) {
		if got := wait(h, (<-chan string)(h.p.reporter.(suspectRecorder)), "suspicion"); got != backend {
			h.t.Fatalf("suspected %s, want %s", got, backend)
		}
	}
}

// routes: the router now offers names (none: the backend is down).
func routes(names ...string) step {
	return func(h *harness) { h.p.router.(*StaticRouter).SetBackends(names) }
}

// unanswered: branch i was sent and the caller has had no response yet (the
// proxy answers before it sends, so a 100 Trying of its own would be there).
func unanswered(i int) step {
	return func(h *harness) {
		h.t.Helper()
		h.br(i)
		select {
		case res := <-h.caller.got:
			h.t.Fatalf("caller got %d before the backend answered", res.StatusCode)
		default:
		}
	}
}

// timesOut: branch i's transaction times out.
func timesOut(i int) step { return func(h *harness) { h.br(i).end(sip.ErrTransactionTimeout) } }

// caller: the caller's next stateful responses are codes.
func caller(codes ...int) step {
	return func(h *harness) {
		h.t.Helper()
		for _, code := range codes {
			if res := wait(h, h.caller.got, "response to the caller"); res.StatusCode != code {
				h.t.Fatalf("caller got %d, want %d", res.StatusCode, code)
			}
		}
	}
}

// stateless: the next response sent statelessly upstream is code.
func stateless(code int) step {
	return func(h *harness) {
		if res := wait(h, h.w.stateless, "stateless response"); res.StatusCode != code {
			h.t.Fatalf("stateless %d, want %d", res.StatusCode, code)
		}
	}
}

// cancelled: the next CANCEL sent downstream is branch i's.
func cancelled(i int) step {
	return func(h *harness) {
		c := wait(h, h.w.cancels, "CANCEL sent")
		want, _ := h.br(i).req.Via().Params.Get("branch")
		if got, _ := c.Via().Params.Get("branch"); got != want {
			h.t.Errorf("CANCEL for branch %s, want %s", got, want)
		}
	}
}

// terminated: the proxy ended branch i's transaction.
func terminated(i int) step { return func(h *harness) { wait(h, h.br(i).done, "branch terminated") } }

// retransmits: a 2xx retransmission of branch i goes up statelessly.
func retransmits(i int) step {
	return func(h *harness) {
		br := h.br(i)
		br.mu.Lock()
		hook := br.retrans
		br.mu.Unlock()
		if hook == nil {
			h.t.Fatal("no 2xx retransmission hook")
		}
		hook(br.response(200))
		stateless(200)(h)
	}
}

// counts: the proxy's metric m reads want.
func counts(m func(*Proxy) prometheus.Collector, want float64) step {
	return func(h *harness) {
		if got := testutil.ToFloat64(m(h.p)); got != want {
			h.t.Errorf("metric = %v, want %v", got, want)
		}
	}
}

var (
	callerCancels step = func(h *harness) { h.caller.cancel() }
	drainAborts   step = func(h *harness) { h.p.abortOnce.Do(func() { close(h.p.abort) }) }
	ends          step = func(h *harness) { wait(h, h.finished, "end of the transaction") }
)

func TestResponseContext(t *testing.T) {
	bes := []target{{backend: "asterisk1", addr: "127.0.0.11:5060", transport: "udp"}, {backend: "asterisk2", addr: "127.0.0.12:5060", transport: "udp"}}
	phones := []target{{addr: "127.0.0.51:5060", transport: "udp", ruri: "sip:201@127.0.0.51"}, {addr: "127.0.0.52:5060", transport: "udp", ruri: "sip:201@127.0.0.52"}}
	fast := func(p *Proxy) { p.cfg.TimerC, p.cancelGuard = time.Millisecond, time.Millisecond }
	cases := []struct {
		name    string
		targets []target // several without retry: a fork
		retry   bool
		tune    func(*Proxy)
		from    string // the request's source; default a phone's
		play    []step
	}{
		{name: "180 then 200", targets: bes[:1], play: []step{answer(0, 100, 180, 200), caller(100, 180, 200), ends,
			counts(func(p *Proxy) prometheus.Collector { return p.dialogs.gauge }, 1), retransmits(0)}},
		{name: "no 100 Trying before the backend has the INVITE", targets: bes[:1], play: []step{unanswered(0), answer(0, 100), caller(100),
			answer(0, 200), caller(200), ends}},
		{name: "a 100 Trying of the proxy's own while the backend is silent", targets: bes[:1], tune: func(p *Proxy) { p.tryingAfter = time.Millisecond },
			play: []step{caller(100), answer(0, 100, 180, 200), caller(180, 200), ends}},
		{name: "503 retries the next backend", targets: bes, retry: true, play: []step{answer(0, 503), answer(1, 180, 200), caller(180, 200), ends,
			counts(func(p *Proxy) prometheus.Collector { return p.m.retries.WithLabelValues("asterisk1", "503") }, 1)}},
		{name: "no retry after a relayed 180", targets: bes, retry: true, play: []step{answer(0, 180, 503), caller(180, 503), ends}},
		{name: "silent backend skipped", targets: bes, retry: true, tune: func(p *Proxy) { p.cfg.HopTimeout = time.Millisecond },
			play: []step{terminated(0), answer(1, 100, 200), caller(100, 200), ends}},
		{name: "486 then 200 on another branch", targets: phones, play: []step{answer(0, 486), answer(1, 180, 200), caller(180, 200), ends}},
		{name: "200 cancels the other branch", targets: phones, play: []step{answer(0, 180), caller(180), answer(1, 200), caller(200),
			cancelled(0), answer(0, 487), ends}},
		{name: "6xx cancels the others", targets: phones, play: []step{answer(0, 180), caller(180), answer(1, 603), cancelled(0),
			answer(0, 487), caller(603), ends}},
		{name: "best of the finals", targets: phones, play: []step{answer(0, 486), answer(1, 503), caller(486), ends}},
		{name: "a forked 503 becomes 500", targets: phones, play: []step{answer(0, 503), timesOut(1), caller(500), ends}},
		{name: "CANCEL crossing a 200", targets: bes[:1], play: []step{answer(0, 180), caller(180), callerCancels, cancelled(0),
			answer(0, 200), stateless(200), ends}},
		{name: "CANCEL cancels every branch once it may", targets: phones, play: []step{answer(0, 180), caller(180), callerCancels,
			cancelled(0), answer(1, 180), cancelled(1), answer(0, 487), answer(1, 487), ends}},
		{name: "Timer C", targets: bes[:1], tune: fast, play: []step{answer(0, 180), caller(180), cancelled(0), answer(0, 487), caller(487), ends,
			counts(func(p *Proxy) prometheus.Collector { return p.m.timerC }, 1)}},
		{name: "Timer C on a fork, callee gone", targets: phones, tune: fast, play: []step{answer(0, 180), caller(180), cancelled(0),
			caller(408), ends, terminated(0), terminated(1)}},
		{name: "Timer C after a 100 Trying only", targets: bes[:1], tune: fast, play: []step{answer(0, 100), caller(100), cancelled(0), caller(408), ends,
			counts(func(p *Proxy) prometheus.Collector { return p.m.timerC }, 1)}},
		{name: "the only backend, slow, is waited for past hop_timeout", targets: bes[:1], retry: true, tune: onlyBackend,
			play: []step{suspects("asterisk1"), answerLive(0, 100, 180, 200), caller(100, 180, 200), ends}},
		{name: "the only backend, gone and back, is tried again by the hold", targets: bes[:1], retry: true,
			tune: onlyBackend, play: []step{suspects("asterisk1"), routes(), terminated(0), caller(100), routes("asterisk1"), answer(1, 100, 200), caller(200), ends}},
		{name: "a backend down after its 100 Trying is given up", targets: bes[:1], retry: true, tune: onlyBackend,
			play: []step{answer(0, 100), caller(100), routes(), terminated(0), routes("asterisk1"), answer(1, 100, 200), caller(200), ends}},
		{name: "a backend down while the call rings is given up: the next backend answers", targets: bes, retry: true, tune: bothBackends,
			play: []step{answer(0, 100, 180), caller(100, 180), routes("asterisk2"), terminated(0), answer(1, 100, 180, 200), caller(180, 200), ends,
				counts(func(p *Proxy) prometheus.Collector { return p.m.retries.WithLabelValues("asterisk1", "down_ringing") }, 1)}},
		{name: "the only backend, down while the call rings, is tried again by the hold", targets: bes[:1], retry: true, tune: onlyBackend,
			play: []step{suspects("asterisk1"), answerLive(0, 180), caller(180), routes(), terminated(0), routes("asterisk1"),
				answer(1, 100, 200), caller(200), ends}},
		{name: "a ringing backend that stays up is waited for", targets: bes[:1], retry: true, tune: onlyBackend,
			play: []step{suspects("asterisk1"), answerLive(0, 180), caller(180), pause(20 * time.Millisecond), answerLive(0, 200), caller(200), ends}},
		{name: "a call its backend placed is cancelled when that backend is down", targets: phones[:1], from: "127.0.0.11:5060", tune: placedBy1,
			play: []step{answer(0, 180), caller(180), routes(), cancelled(0), answer(0, 487), caller(487), ends,
				counts(func(p *Proxy) prometheus.Collector { return p.m.placerDown }, 1)}},
		{name: "a call its backend placed rings on while that backend is up", targets: phones[:1], from: "127.0.0.11:5060", tune: placedBy1,
			play: []step{answer(0, 180), caller(180), pause(20 * time.Millisecond), answerLive(0, 200), caller(200), ends,
				counts(func(p *Proxy) prometheus.Collector { return p.m.placerDown }, 0)}},
		{name: "a backend's answers are evidence of life, its 503 is not", targets: bes, retry: true, tune: hearing,
			play: []step{answer(0, 503), answer(1, 180, 200), caller(180, 200), ends, heardFrom("asterisk2", "asterisk2")}},
		{name: "drain", targets: bes[:1], play: []step{answer(0, 180), caller(180), drainAborts, cancelled(0), caller(503), ends}},
		{name: "transaction timeout", targets: bes[:1], play: []step{answer(0, 100), caller(100), timesOut(0), caller(408), ends}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Listen, cfg.Advertise, cfg.NoBackendWait = []string{"udp://127.0.0.1:5060"}, "127.0.0.1", 0
			p, err := New(cfg, []Backend{{Name: "asterisk1", Address: bes[0].addr, Transport: "udp"}, {Name: "asterisk2", Address: bes[1].addr, Transport: "udp"}},
				nil, zaptest.NewLogger(t), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			p.tryingAfter = time.Hour // the play's own pace decides; a case may tune it
			if tc.tune != nil {
				tc.tune(p)
			}
			w := &fakeWire{txs: make(chan *fakeClientTx, 8), cancels: make(chan *sip.Request, 8), stateless: make(chan *sip.Response, 8)}
			p.wire = w
			h := &harness{t: t, p: p, w: w, caller: &fakeServerTx{got: make(chan *sip.Response, 8), done: make(chan struct{})}, finished: make(chan struct{})}
			req := parseRequest(t, "INVITE", "caller", "")
			req.SetSource(cmp.Or(tc.from, "127.0.0.9:5060"))
			go func() {
				defer close(h.finished)
				p.forward(req, h.caller, slices.Clone(tc.targets), tc.retry)
			}()
			for _, s := range tc.play {
				s(h)
			}
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
