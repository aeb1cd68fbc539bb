package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hapbx/hapbx/internal/testkit"
)

// chromium runs headless Chromium with args then url, in its own process
// group (it forks a zygote, a GPU and renderer processes) with a profile
// of its own, and returns what it printed on stdout. No network beyond
// url: no first-run, sync, updates or background requests.
func chromium(t *testing.T, bin, url string, args ...string) string {
	t.Helper()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir()}, args...)
	cmd := exec.Command(bin, append(all, url)...)
	var stdout, stderr testkit.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	p, err := testkit.StartGroup(cmd)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done:
	case <-time.After(90 * time.Second):
		p.Kill()
		t.Fatalf("chromium %s: no result within 90s\n%s", strings.Join(args, " "), stderr.String())
	}
	if code := p.ExitCode(); code != 0 {
		t.Fatalf("chromium %s: exit %d\n%s", strings.Join(args, " "), code, stderr.String())
	}
	return stdout.String()
}

// TestStatusPageInChromium is issue 18's browser check: hapbx with two
// SIPp backends; one SIPp is SIGKILLed; once the status shows it down, the
// page as headless Chromium renders it shows that backend down (and the
// other up, active) and the events, and Chromium takes a screenshot.
func TestStatusPageInChromium(t *testing.T) {
	testkit.RequireSIPp(t)
	bin := needChromium(t)
	d, be1 := startHotPair(t)

	be1.Kill()
	d.waitState(t, "asterisk1", "down", 5*time.Second)
	d.waitActive(t, "asterisk2")

	dom := chromium(t, bin, d.admin+"/status", "--dump-dom")
	row := func(name string) string {
		i := strings.Index(dom, `<tr data-backend="`+name+`"`)
		if i < 0 {
			t.Fatalf("rendered page has no row for %s:\n%s", name, dom)
		}
		return dom[i : i+strings.Index(dom[i:], "</tr>")]
	}
	for _, c := range []struct{ name, want string }{
		{"asterisk1", `data-state="down"`}, {"asterisk1", `<span class="badge bad">down</span>`},
		{"asterisk2", `data-state="up"`}, {"asterisk2", `<span class="badge ok">up</span>`}, {"asterisk2", "active"},
	} {
		if r := row(c.name); !strings.Contains(r, c.want) {
			t.Errorf("%s's row lacks %q:\n%s", c.name, c.want, r)
		}
	}
	if ev := section(dom, "events"); !strings.Contains(ev, "asterisk1") || !strings.Contains(ev, "-&gt; down") ||
		!strings.Contains(ev, "active backend asterisk2 (was asterisk1)") {
		t.Errorf("rendered events lack asterisk1 going down and the failover to asterisk2:\n%s", ev)
	}

	screenshot(t, bin, d.admin+"/status", "status-hot.png")
}

// needChromium returns the chromium binary or skips the test.
func needChromium(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (Debian package chromium): the status page is not checked in a browser")
	}
	return bin
}

// screenshot has Chromium take a 1200x900 screenshot of url and checks it
// is a PNG of some size. With HAPBX_STATUS_SCREENSHOTS set to a directory
// it is kept there as name (docs/status-page.png is made that way).
func screenshot(t *testing.T, bin, url, name string) {
	t.Helper()
	shot := filepath.Join(t.TempDir(), name)
	if dir := os.Getenv("HAPBX_STATUS_SCREENSHOTS"); dir != "" {
		var err error
		if shot, err = filepath.Abs(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	chromium(t, bin, url, "--screenshot="+shot, "--window-size=1200,900", "--hide-scrollbars")
	png, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 10_000 {
		t.Fatalf("screenshot %s is no page-sized PNG (%d bytes)", shot, len(png))
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}

// section is the rendered <section id="id"> of dom ("" when absent).
func section(dom, id string) string {
	i := strings.Index(dom, `<section id="`+id+`">`)
	if i < 0 {
		return ""
	}
	return dom[i : i+strings.Index(dom[i:], "</section>")]
}

// TestStatusPageColdInChromium: the cold standby lab with the proxy's
// cluster (VIP on lo, two witnesses, the agents joined); node A crashes
// (its Asterisk and agent SIGKILLed); once the group runs on B, the page
// as Chromium renders it shows this proxy holding the VIP, asterisk1 down
// with its agent unreachable, B holding the group as DRBD Primary, the
// fenced move and its events.
func TestStatusPageColdInChromium(t *testing.T) {
	bin := needChromium(t)
	l := newColdLab(t)
	l.newLabCluster()
	a, _ := l.addNode("A", false), l.addNode("B", false)
	l.startProxy(false)
	l.waitStatus("group started on A and routed", 20*time.Second, func(s coldStatus) bool {
		return s.Cold.Holder == "asterisk1" && s.Active == "asterisk1" && s.Cold.Phase == "idle"
	})
	l.calls(2)
	l.crash(a)
	l.waitStatus("group moved to B and routed, A's agent gone", 20*time.Second, func(s coldStatus) bool {
		gone := false
		for _, n := range s.Cold.Nodes {
			gone = gone || (n.Name == "asterisk1" && !n.Reachable)
		}
		return gone && s.Cold.Holder == "asterisk2" && s.Active == "asterisk2" && s.Cold.Last != nil && !s.Cold.Last.UpAt.IsZero()
	})

	dom := chromium(t, bin, l.proxy.admin+"/status", "--dump-dom")
	vip := dom[strings.Index(dom, `<article id="vip"`):]
	vip = vip[:strings.Index(vip, "</article>")]
	cold := section(dom, "cold")
	events := section(dom, "events")
	for _, c := range []struct{ where, text, want string }{
		{"VIP card", vip, "test"}, {"VIP card", vip, "127.0.3.200/32"}, {"VIP card", vip, "held by this proxy"},
		{"backends", section(dom, "backends"), `data-backend="asterisk1" data-state="down"`},
		{"cold standby", cold, "resource group on <b>asterisk2</b>"},
		{"cold standby", cold, "unreachable"},
		{"cold standby", cold, "Primary"},
		{"cold standby", cold, "asterisk1 → asterisk2"},
		{"cold standby", cold, "asterisk1 fenced"},
		{"events", events, "moving the resource group from asterisk1 to asterisk2"},
		{"events", events, "resource group started on asterisk2"},
		{"events", events, "VIP 127.0.3.200/32 taken by this node"},
	} {
		if !strings.Contains(c.text, c.want) {
			t.Errorf("rendered %s lacks %q:\n%s", c.where, c.want, c.text)
		}
	}
	screenshot(t, bin, l.proxy.admin+"/status", "status-cold.png")
}
