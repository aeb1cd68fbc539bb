package relaybench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/hapbx/hapbx/media"
	"go.uber.org/zap"
)

// ChildEnv is set in the environment of the relay child process.
const ChildEnv = "RELAYBENCH_CHILD"

func sdpFor(ap netip.AddrPort) []byte {
	return fmt.Appendf(nil, "v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio %d RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",
		ap.Addr(), ap.Addr(), ap.Port())
}

// RunChild is the relay side: it serves anchor requests from in until EOF.
func RunChild(cfg media.Config, in io.Reader, out io.Writer) error {
	// Warnings (e.g. the kernel data path failing) go to stderr.
	lc := zap.NewDevelopmentConfig()
	lc.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	log, err := lc.Build()
	if err != nil {
		return err
	}
	r, err := media.New(cfg, log, nil)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- r.Run(ctx) }()
	defer func() { stop(); <-ran }()
	sc := bufio.NewScanner(in)
	w := bufio.NewWriter(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 1 && f[0] == "datapath" {
			dp := media.DatapathUser
			if r.KernelDatapath() {
				dp = media.DatapathKernel + " " + r.KernelEngine()
			}
			fmt.Fprintln(w, dp)
			w.Flush()
			continue
		}
		if len(f) == 1 && f[0] == "inkernel" {
			// How many legs the kernel forwards: the measured window
			// waits for all, so that it does not measure the hand-over.
			n := 0
			for _, ss := range r.Snapshot() {
				for _, st := range ss.Streams {
					for _, k := range []bool{st.FromA.Kernel, st.FromB.Kernel} {
						if k {
							n++
						}
					}
				}
			}
			fmt.Fprintln(w, n)
			w.Flush()
			continue
		}
		if len(f) == 1 && f[0] == "sync" {
			fmt.Fprintln(w, "ok")
			w.Flush()
			continue
		}
		if len(f) != 3 {
			return fmt.Errorf("bad request %q", sc.Text())
		}
		a, errA := netip.ParseAddrPort(f[1])
		b, errB := netip.ParseAddrPort(f[2])
		if errA != nil || errB != nil {
			return fmt.Errorf("bad addresses in %q", sc.Text())
		}
		toB, err := r.Anchor(f[0], true, sdpFor(a))
		if err != nil {
			return err
		}
		toA, err := r.Anchor(f[0], false, sdpFor(b))
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s %d %d\n", f[0], mport(toA), mport(toB))
		w.Flush()
	}
	return sc.Err()
}

func mport(body []byte) int {
	s := string(body)
	i := strings.Index(s, "m=audio ")
	var p int
	fmt.Sscanf(s[i+8:], "%d", &p)
	return p
}
