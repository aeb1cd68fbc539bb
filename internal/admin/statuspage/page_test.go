package statuspage

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/event"
)

var at = time.Date(2026, 12, 5, 1, 0, 0, 0, time.Local)

func pair() Snapshot {
	return Snapshot{
		At: at, Node: "proxy-a", Version: "1.2.3", Started: at.Add(-2 * time.Hour), Routing: "active-standby",
		Active: "asterisk2",
		Cluster: &Cluster{VIP: "192.168.1.13/24", Holders: []string{"proxy-b"}, Leader: "proxy-b", Quorum: true,
			Members: []Member{{Name: "proxy-a", Role: "proxy", State: "alive"}, {Name: "proxy-b", Role: "proxy", State: "alive", VIPHeld: true}}},
		Backends: []Backend{
			{Name: "asterisk1", Address: "10.0.0.11:5060", Transport: "udp", State: "down", Reason: "sip: connection refused", Since: at.Add(-42 * time.Second)},
			{Name: "asterisk2", Address: "10.0.0.12:5060", Transport: "udp", State: "up", Reason: "sip: 200 OK", Since: at.Add(-time.Hour),
				SIP: "answered 200 in 1ms", AMI: "logged in, fully booted"},
		},
		Cold: &Cold{Holder: "asterisk2", Phase: "idle", Nodes: []ColdNode{
			{Name: "asterisk1", Health: "down", Error: "agent unreachable"},
			{Name: "asterisk2", Health: "up", Reachable: true, Group: "started", DRBDRole: "Primary", Disk: "UpToDate",
				PeerRole: "Unknown", PeerDisk: "DUnknown", Connection: "StandAlone", Mounted: "/dev/drbd0", Service: "active"},
		}, LastMove: &Move{From: "asterisk1", To: "asterisk2", Reason: "backend down: sip: timeout", At: at.Add(-40 * time.Second), Took: 3 * time.Second, Fenced: true}},
		Registrations: Registrations{Bindings: 17, AORs: 12},
		Calls:         Calls{Dialogs: 4, MediaSessions: -1},
		Events: []event.Event{
			{At: at.Add(-40 * time.Second), Kind: event.Failover, Subject: "asterisk2", Text: "active backend asterisk2 (was asterisk1)", Warn: true},
			{At: at.Add(-42 * time.Second), Kind: event.Backend, Subject: "asterisk1", Text: "up -> down: sip: connection refused", Warn: true},
		},
	}
}

func render(t *testing.T, s Snapshot, opts ...Option) (*httptest.ResponseRecorder, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	New(SourceFunc(func() Snapshot { return s }), nil, opts...).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
	}
	return rec, rec.Body.String()
}

// part is the element whose id attribute is id, up to its closing tag
// (sections and cards hold no element of the same kind).
func part(t *testing.T, body, tag, id string) string {
	t.Helper()
	start := strings.Index(body, "<"+tag+` id="`+id+`"`)
	if start < 0 {
		t.Fatalf("no <%s id=%q> in:\n%s", tag, id, body)
	}
	end := strings.Index(body[start:], "</"+tag+">")
	if end < 0 {
		t.Fatalf("<%s id=%q> not closed", tag, id)
	}
	return body[start : start+end]
}

func contains(t *testing.T, where, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q:\n%s", where, w, text)
		}
	}
}

// TestPageShowsSnapshot: the VIP holder, each backend's state with its
// reason and since when, the cold standby group, the counts and the
// events, each in its place.
func TestPageShowsSnapshot(t *testing.T) {
	rec, body := render(t, pair())
	if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q: the page must load nothing from outside", csp)
	}
	contains(t, "page", body, `<meta http-equiv="refresh" content="5">`, "hapbx · proxy-a", "version 1.2.3", "up 2h00m")
	contains(t, "VIP card", part(t, body, "article", "vip"), "proxy-b", "192.168.1.13/24", "not on this proxy")
	contains(t, "active card", part(t, body, "article", "active"), "asterisk2")
	contains(t, "registrations card", part(t, body, "article", "registrations"), ">17<", "12 addresses of record")
	contains(t, "calls card", part(t, body, "article", "calls"), ">4<", "media relay off")
	backends := part(t, body, "section", "backends")
	contains(t, "backends", backends,
		`<tr data-backend="asterisk1" data-state="down"`, `<span class="badge bad">down</span>`, "sip: connection refused",
		at.Add(-42*time.Second).Format("2006-01-02 15:04:05"), "42s ago",
		`<tr data-backend="asterisk2" data-state="up"`, `<span class="badge ok">up</span>`, "1h00m ago")
	contains(t, "backends", backends, `title="SIP: answered 200 in 1ms&#10;AMI: logged in, fully booted"`)
	contains(t, "cluster", part(t, body, "section", "cluster"), "raft leader <b>proxy-b</b>", "<b>proxy-b</b> <span class=\"muted\">proxy</span> <span class=\"badge ok\">alive</span> <span class=\"badge ok\">holds the VIP</span>")
	cold := part(t, body, "section", "cold")
	a1, a2 := cold[strings.Index(cold, `data-node="asterisk1"`):strings.Index(cold, `data-node="asterisk2"`)], cold[strings.Index(cold, `data-node="asterisk2"`):]
	if !strings.Contains(a1, `class="stale"`) || strings.Contains(a2, "stale") {
		t.Errorf("an unreachable agent's last known state is not shown as stale (and only it):\n%s", cold)
	}
	contains(t, "cold", part(t, body, "section", "cold"), "resource group on <b>asterisk2</b>",
		`<span class="badge ok">UpToDate</span>`, `<span class="badge bad">StandAlone</span>`, "/dev/drbd0", "unreachable",
		"asterisk1 → asterisk2", "asterisk1 fenced", "group started after 3s")
	events := part(t, body, "section", "events")
	contains(t, "events", events, at.Add(-40*time.Second).Format("2006-01-02 15:04:05"), "active backend asterisk2 (was asterisk1)",
		"up -&gt; down: sip: connection refused")
	if i, j := strings.Index(events, "active backend asterisk2"), strings.Index(events, "up -&gt; down"); i > j {
		t.Errorf("events not in the given order (newest first):\n%s", events)
	}
	contains(t, "trunks", part(t, body, "section", "trunks"), "not available", "no SIP trunk support yet")
	for _, external := range []string{"<script", "src=\"http", "href=\"http", "@import"} {
		if strings.Contains(body, external) {
			t.Errorf("page has %q: it must work offline and without scripts", external)
		}
	}
}

// TestPageEscapes: names, reasons and event texts come from the network
// (gossip, SIP reason phrases) and are shown as text, never as markup.
func TestPageEscapes(t *testing.T) {
	s := pair()
	s.Backends[0].Name = `<script>alert(1)</script>`
	s.Backends[0].Reason = `sip: 503 <b>"Service" Unavailable</b>`
	s.Cluster.Holders = []string{`evil"><img src=x>`}
	s.Events[0].Text = `</td><script>alert(2)</script>`
	_, body := render(t, s)
	for _, raw := range []string{"<script>alert", "<img src=x>", "<b>\"Service\"", `data-backend="<`} {
		if strings.Contains(body, raw) {
			t.Errorf("page holds %q unescaped", raw)
		}
	}
	contains(t, "page", body, "&lt;script&gt;alert(1)&lt;/script&gt;", `data-backend="&lt;script&gt;alert(1)&lt;/script&gt;"`,
		"&lt;b&gt;&#34;Service&#34; Unavailable&lt;/b&gt;", "evil&#34;&gt;&lt;img src=x&gt;", "&lt;/td&gt;&lt;script&gt;alert(2)")
}

// TestPageAlone: a proxy without a cluster or cold standby says so and
// has no section for them; with no active backend and no VIP holder the
// page says it in red.
func TestPageAlone(t *testing.T) {
	s := pair()
	s.Cluster, s.Cold, s.Active, s.Events = nil, nil, "", nil
	s.Calls.MediaSessions = 3
	_, body := render(t, s)
	contains(t, "VIP card", part(t, body, "article", "vip"), "proxy-a", "no cluster: this proxy alone, no VIP")
	contains(t, "active card", part(t, body, "article", "active"), `<span class="text-bad">none usable</span>`)
	contains(t, "calls card", part(t, body, "article", "calls"), "3 media sessions relayed")
	contains(t, "events", part(t, body, "section", "events"), "no events yet")
	for _, id := range []string{`id="cluster"`, `id="cold"`} {
		if strings.Contains(body, id) {
			t.Errorf("page has %s without a cluster or cold standby", id)
		}
	}
	s = pair()
	s.Cluster.Holders = nil
	_, body = render(t, s)
	contains(t, "VIP card", part(t, body, "article", "vip"), `<span class="text-bad">nobody</span>`)
	s.Cluster.Holders = []string{"proxy-a", "proxy-b"}
	_, body = render(t, s)
	contains(t, "VIP card", part(t, body, "article", "vip"), "proxy-a, proxy-b", "more than one holder")
}

type trunks []Trunk

func (t trunks) Trunks() []Trunk { return t }

// TestPageTrunks: the trunks' place lists what a TrunkSource gives.
func TestPageTrunks(t *testing.T) {
	_, body := render(t, pair(), WithTrunks(trunks(nil)))
	contains(t, "trunks", part(t, body, "section", "trunks"), "no trunks configured")
	_, body = render(t, pair(), WithTrunks(trunks{{Name: "sipgate", Provider: "sipconnect.sipgate.de", State: "registered", Reason: "200 OK", Since: at.Add(-5 * time.Minute)}}))
	tr := part(t, body, "section", "trunks")
	contains(t, "trunks", tr, "<b>sipgate</b>", "sipconnect.sipgate.de", `<span class="badge ok">registered</span>`, "5m00s ago")
	if strings.Contains(tr, "not available") {
		t.Errorf("trunks marked unavailable although a source is wired:\n%s", tr)
	}
}

func TestSpan(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"}, {400 * time.Millisecond, "0s"}, {42 * time.Second, "42s"}, {3*time.Minute + 5*time.Second, "3m05s"},
		{2*time.Hour + 7*time.Minute + 59*time.Second, "2h07m"}, {76 * time.Hour, "3d04h"},
	} {
		if got := span(c.d); got != c.want {
			t.Errorf("span(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}
