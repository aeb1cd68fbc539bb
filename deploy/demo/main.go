// Command demo is `make demo` (issue 7.1): it runs hapbx's network-namespace
// lab (deploy/lab) as root — two proxies sharing a VIP, a witness, two PBX
// backends (a real asterisk when one is on PATH or $HAPBX_ASTERISK names
// one, else SIPp with an AMI server; run by hapbx agents in cold standby;
// -cold=false: both run, hot standby), SIPp phones
// registering and calling through the VIP — then kills the active PBX, kills the VIP holder, brings it back, cuts the two proxies
// apart and restores everything, and prints one table. Without root it says
// so in one line and exits 1. Ctrl-C removes everything it made.
//
//	go build -o bin/hapbx-demo ./deploy/demo && bin/hapbx-demo -bin bin/hapbx
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/hapbx/hapbx/deploy/lab"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == lab.AMIServerCommand {
		// Hidden: the lab runs this binary as each SIPp backend's AMI server.
		os.Exit(lab.AMIServerMain(os.Args[2:], os.Stderr))
	}
	bin := flag.String("bin", "bin/hapbx", "hapbx binary")
	root := flag.String("root", ".", "repository root (SIPp scenarios)")
	rate := flag.Int("rate", 20, "new calls per second (bounded: 6 s of calls per event)")
	phones := flag.Int("phones", 20, "phones registering through the VIP (1..20)")
	quiet := flag.Bool("q", false, "only the table")
	cold := flag.Bool("cold", true, "cold standby: the PBXs run under their hapbx agents, one at a time (false: both run, hot standby)")
	chanSIP := flag.Bool("chan_sip", false, "with a real Asterisk: chan_sip and sip.conf instead of chan_pjsip and pjsip.conf")
	dir := flag.String("dir", "", "keep the lab's configs and logs (PBX, SIPp, hapbx) in this directory (default: a temporary one, removed)")
	flag.Parse()
	if err := lab.Check(); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
	start := time.Now()
	logf := func(format string, args ...any) {
		if !*quiet {
			fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		}
	}
	l, err := lab.New(lab.Options{Bin: *bin, Root: *root, Logf: logf, Signals: true, Cold: *cold, Dir: *dir, ChanSIP: *chanSIP, Trunk: true})
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
	rep, err := l.RunScenario(lab.ScenarioOptions{Rate: *rate, Phones: *phones, Logf: logf})
	l.Close()
	fmt.Println()
	fmt.Print(rep.Table())
	fmt.Printf("(namespaces and processes removed; %.0f s in all)\n", time.Since(start).Seconds())
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}
