package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/hapbx/hapbx/config/heartbeat"
)

// addressFlag collects -address NODE=IP.
type addressFlag map[string]netip.Addr

func (a addressFlag) String() string { return "" }

func (a addressFlag) Set(v string) error {
	name, ip, ok := strings.Cut(v, "=")
	addr, err := netip.ParseAddr(ip)
	if !ok || name == "" || err != nil {
		return fmt.Errorf("%q is not NODE=IP", v)
	}
	a[name] = addr
	return nil
}

// importHeartbeat is `hapbx import-heartbeat`: it writes the files
// config/heartbeat generates and prints what the operator must do.
func importHeartbeat(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("import-heartbeat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	haDir := fs.String("ha-dir", "/etc/ha.d", "Heartbeat's directory: ha.cf, authkeys, haresources, resource.d")
	drbdConf := fs.String("drbd-conf", "/etc/drbd.conf", "DRBD's configuration (its include statements are followed)")
	host, _ := os.Hostname()
	node := fs.String("node", host, "the node to write the files for (one of ha.cf's node lines)")
	addrs := addressFlag{}
	fs.Var(addrs, "address", "NODE=IP: a node's address when drbd.conf does not give it (repeatable)")
	witness := fs.String("witness", "", "the witness's IP (third voter); unset: a placeholder to edit")
	secrets := fs.String("secrets-dir", "/etc/hapbx", "where the generated files expect the secret files")
	out := fs.String("o", ".", "directory to write hapbx.yaml and hapbx-agent.yaml into (existing files are not overwritten)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "hapbx import-heartbeat: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	o := heartbeat.Options{HaDir: *haDir, DRBDConf: *drbdConf, Node: *node, Addresses: addrs, SecretsDir: *secrets}
	if *witness != "" {
		w, err := netip.ParseAddr(*witness)
		if err != nil {
			fmt.Fprintf(stderr, "hapbx import-heartbeat: -witness %q is not an IP address\n", *witness)
			return 2
		}
		o.Witness = w
	}
	r, err := heartbeat.Import(o)
	if err != nil {
		fmt.Fprintln(stderr, "hapbx import-heartbeat:", err)
		return 1
	}
	files := []struct {
		name string
		data []byte
	}{{"hapbx.yaml", r.Proxy}, {"hapbx-agent.yaml", r.Agent}}
	for _, f := range files {
		if f.data == nil {
			continue
		}
		path := filepath.Join(*out, f.name)
		// O_EXCL: an import run twice must not overwrite a file edited since.
		w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
		if err == nil {
			_, err = w.Write(f.data)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, "hapbx import-heartbeat:", err)
			return 1
		}
		fmt.Fprintln(stdout, "wrote", path)
	}
	if r.Agent == nil {
		fmt.Fprintln(stdout, "no agent file: haresources has no DRBD resource (hot standby)")
	}
	fmt.Fprintln(stdout, "\nsecret files to create (Heartbeat's secrets were not copied):")
	for _, s := range r.Secrets {
		fmt.Fprintf(stdout, "  %s: %s\n", s.Path, s.What)
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(stdout, "\nnot imported:")
		for _, f := range r.Skipped {
			fmt.Fprintln(stdout, " ", f)
		}
	}
	if len(r.Todo) > 0 {
		fmt.Fprintln(stdout, "\nto check by hand:")
		for _, t := range r.Todo {
			fmt.Fprintln(stdout, "  -", t)
		}
	}
	fmt.Fprintln(stdout, "\nthen: hapbx check-config -c FILE on each file")
	return 0
}
