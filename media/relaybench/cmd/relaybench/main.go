// Command relaybench drives N concurrent RTP calls through the media relay
// (run as a child process) and straight phone to phone (baseline), and prints
// throughput, loss, added latency and relay CPU per packet.
//
//	go run ./media/relaybench/cmd/relaybench -calls 500,1000,2000 -duration 10s
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hapbx/hapbx/media"
	"github.com/hapbx/hapbx/media/relaybench"
)

func main() {
	if os.Getenv(relaybench.ChildEnv) == "1" {
		cfg := media.DefaultConfig()
		cfg.Enabled = true
		cfg.Address = os.Getenv("RELAYBENCH_ADDR")
		cfg.Ports = os.Getenv("RELAYBENCH_PORTS")
		cfg.IdleTimeout = time.Hour
		cfg.Workers, _ = strconv.Atoi(os.Getenv("RELAYBENCH_WORKERS"))
		if path := os.Getenv("RELAYBENCH_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			fatal(err)
			fatal(pprof.StartCPUProfile(f))
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
		if err := relaybench.RunChild(cfg, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "relay child:", err)
		}
		return
	}
	calls := flag.String("calls", "500,1000,2000", "comma-separated numbers of concurrent calls")
	dur := flag.Duration("duration", 10*time.Second, "measured window per run")
	warm := flag.Duration("warmup", 2*time.Second, "unmeasured start of each run")
	mode := flag.String("mode", "both", "baseline, relay or both")
	ports := flag.String("ports", "20000-30000", "relay port range")
	workers := flag.Int("workers", 0, "relay data-path workers (0: GOMAXPROCS)")
	procs := flag.Int("relay-procs", 0, "GOMAXPROCS of the relay child (0: Go's default)")
	pps := flag.Int("pps", 50, "packets per second per direction")
	size := flag.Int("size", 172, "datagram size")
	flag.Parse()
	ip := netip.MustParseAddr("127.0.0.1")
	for _, cs := range strings.Split(*calls, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(cs))
		if err != nil || n <= 0 {
			fatal(fmt.Errorf("bad -calls %q", cs))
		}
		if *mode == "baseline" || *mode == "both" {
			phones := mkPhones(ip, n)
			for i := 0; i < len(phones); i += 2 {
				phones[i].SetDest(phones[i+1].Addr)
				phones[i+1].SetDest(phones[i].Addr)
			}
			var g0, g1 time.Duration
			res, err := relaybench.Run(relaybench.Load{Phones: phones, PPS: *pps, Size: *size, Warmup: *warm, Duration: *dur,
				OnWindow: func(start bool) {
					if start {
						g0 = selfCPU()
					} else {
						g1 = selfCPU()
					}
				}})
			fatal(err)
			fmt.Printf("calls=%d mode=baseline %s offered=%.0f%% gen_cpu_per_pkt=%s (generator send+receive per datagram, for comparison)\n",
				n, res, offered(res, n, *pps), perPacket(g1-g0, res.Sent))
			closeAll(phones)
		}
		if *mode == "relay" || *mode == "both" {
			res, cpu, gen, err := relayRun(ip, n, *ports, *workers, *procs, relaybench.Load{PPS: *pps, Size: *size, Warmup: *warm, Duration: *dur})
			fatal(err)
			fmt.Printf("calls=%d mode=relay    %s offered=%.0f%% relay_cpu=%s (%.0f%% of a core) relay_cpu_per_pkt=%s gen_cpu_per_pkt=%s\n",
				n, res, offered(res, n, *pps), cpu.Round(time.Millisecond), 100*cpu.Seconds()/res.Elapsed.Seconds(), perPacket(cpu, res.Sent), perPacket(gen, res.Sent))
		}
	}
}

// offered is the share of the nominal load (2 directions x pps per call) the
// generator managed to send: below 100% the box could not generate the load,
// and loss and latency describe a lighter one.
func offered(res relaybench.Result, calls, pps int) float64 {
	want := float64(2*calls*pps) * res.Elapsed.Seconds()
	if want == 0 {
		return 0
	}
	return 100 * float64(res.Sent) / want
}

// relayRun returns the result, the relay child's CPU time and the
// generator's own CPU time over the measured window.
func relayRun(ip netip.Addr, n int, ports string, workers, procs int, l relaybench.Load) (relaybench.Result, time.Duration, time.Duration, error) {
	self, err := os.Executable()
	if err != nil {
		return relaybench.Result{}, 0, 0, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), relaybench.ChildEnv+"=1", "RELAYBENCH_ADDR="+ip.String(), "RELAYBENCH_PORTS="+ports,
		"RELAYBENCH_WORKERS="+strconv.Itoa(workers))
	if procs > 0 {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(procs))
	}
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	outp, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return relaybench.Result{}, 0, 0, err
	}
	defer func() { in.Close(); _ = cmd.Wait() }()
	phones := mkPhones(ip, n)
	defer closeAll(phones)
	bw := bufio.NewWriter(in)
	for i := 0; i < len(phones); i += 2 {
		fmt.Fprintf(bw, "c%d %s %s\n", i/2, phones[i].Addr, phones[i+1].Addr)
	}
	bw.Flush()
	sc := bufio.NewScanner(outp)
	for i := 0; i < len(phones); i += 2 {
		if !sc.Scan() {
			return relaybench.Result{}, 0, 0, fmt.Errorf("relay child stopped after %d calls", i/2)
		}
		var id string
		var pa, pb int
		if _, err := fmt.Sscanf(sc.Text(), "%s %d %d", &id, &pa, &pb); err != nil {
			return relaybench.Result{}, 0, 0, fmt.Errorf("relay child said %q", sc.Text())
		}
		phones[i].SetDest(netip.AddrPortFrom(ip, uint16(pa)))
		phones[i+1].SetDest(netip.AddrPortFrom(ip, uint16(pb)))
	}
	var c0, c1, g0, g1 time.Duration
	l.Phones = phones
	l.OnWindow = func(start bool) {
		if start {
			c0, g0 = procCPU(cmd.Process.Pid), selfCPU()
		} else {
			c1, g1 = procCPU(cmd.Process.Pid), selfCPU()
		}
	}
	res, err := relaybench.Run(l)
	return res, c1 - c0, g1 - g0, err
}

// procCPU reads utime+stime of pid from /proc (clock ticks of 10 ms). With
// tick-based accounting the softirq a send runs on loopback (delivery into
// the receiving socket and its wake-up) is charged to the sending process,
// for the relay and for the generator alike.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func perPacket(cpu time.Duration, pkts uint64) time.Duration {
	if pkts == 0 {
		return 0
	}
	return cpu / time.Duration(pkts)
}

func mkPhones(ip netip.Addr, n int) []*relaybench.Phone {
	ps := make([]*relaybench.Phone, 0, 2*n)
	for range 2 * n {
		p, err := relaybench.NewPhone(ip)
		fatal(err)
		ps = append(ps, p)
	}
	return ps
}

func closeAll(ps []*relaybench.Phone) {
	for _, p := range ps {
		p.Close()
	}
}

func fatal(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "relaybench:", err)
		os.Exit(1)
	}
}
