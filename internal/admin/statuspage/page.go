package statuspage

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
)

// RefreshSeconds is how often the page reloads itself (a meta refresh:
// no script).
const RefreshSeconds = 5

//go:embed page.html
var pageHTML string

var pageTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"stateClass": stateClass,
	"join":       strings.Join,
}).Parse(pageHTML))

// Page serves the status page.
type Page struct {
	src    Source
	trunks TrunkSource // nil: hapbx has no trunks (yet)
	log    *zap.Logger
}

// Option configures a Page.
type Option func(*Page)

// WithTrunks adds the trunks' section from src; without it the page says
// that this hapbx has no trunk support.
func WithTrunks(src TrunkSource) Option {
	return func(p *Page) { p.trunks = src }
}

// New returns the page over src.
func New(src Source, log *zap.Logger, opts ...Option) *Page {
	if log == nil {
		log = zap.NewNop()
	}
	p := &Page{src: src, log: log}
	for _, o := range opts {
		o(p)
	}
	return p
}

// ServeHTTP renders one snapshot.
func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	v := view{Snapshot: p.src.Snapshot(), Refresh: RefreshSeconds, TrunkSupport: p.trunks != nil}
	if v.At.IsZero() {
		v.At = time.Now()
	}
	if p.trunks != nil {
		v.Trunks = p.trunks.Trunks()
	}
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, v); err != nil {
		p.log.Error("status page not rendered", zap.Error(err))
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Nothing outside the page itself, and no framing by other sites.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(buf.Bytes())
}

// view is what the template renders.
type view struct {
	Snapshot
	Refresh      int
	TrunkSupport bool
	Trunks       []Trunk
}

// Clock is t as a local date and time ("-" for the zero time).
func (v view) Clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// Ago is the time from t to the snapshot, to the second.
func (v view) Ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return span(v.At.Sub(t)) + " ago"
}

// Uptime is the time from Started to the snapshot.
func (v view) Uptime() string {
	if v.Started.IsZero() {
		return "-"
	}
	return span(v.At.Sub(v.Started))
}

// Zone names the time zone of the page's times.
func (v view) Zone() string {
	name, _ := v.At.Local().Zone()
	return name
}

// span writes d coarsely: 42s, 3m05s, 2h07m, 3d04h.
func span(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// stateClass maps a state word to one of the page's colours.
func stateClass(state string) string {
	switch state {
	case "up", "alive", "started", "UpToDate", "Connected", "active", "registered":
		return "ok"
	case "suspect", "starting", "stopping", "waiting-up", "fencing",
		"Inconsistent", "Outdated", "Consistent", "DUnknown", "Connecting", "Unconnected":
		return "warn"
	case "down", "dead", "failed", "left", "blocked",
		"Failed", "Diskless", "StandAlone", "NetworkFailure", "BrokenPipe", "Timeout", "ProtocolError":
		return "bad"
	}
	return "none"
}
