package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
)

// version is stamped at build time: -ldflags "-X .../app.version=v1.2.3".
var version = "dev"

const usage = `usage: hapbx <command> [flags]

commands:
  run -c FILE                run the proxy daemon
  agent -c FILE              run a PBX node's storage agent (DRBD, file system, Asterisk)
  witness -c FILE            run the cluster's third voter (never holds the VIP)
  release-vip -c FILE        remove the VIP from this host if present (systemd ExecStopPost)
  status [-c FILE] [--json]  each node's role, health, DRBD, mount and service state
  standby [-c FILE] [NODE]   cold standby: move the group off NODE (default: its holder)
  takeover [-c FILE] [NODE]  cold standby: move the group to NODE (default: node.name)
  check-config -c FILE       validate FILE (proxy, agent or witness file); exit 1 listing every problem
  import-heartbeat [flags]   write hapbx.yaml and hapbx-agent.yaml from Heartbeat's ha.cf, authkeys,
                             haresources and drbd.conf (-h for the flags)
  version                    print the version
`

// Main runs the command in args and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "hapbx %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "check-config", "run", "agent", "release-vip", "witness":
		path, code := configFlag(cmd, rest, stderr)
		if code != 0 {
			return code
		}
		return withConfig(cmd, path, stdout, stderr)
	case "status":
		return statusCmd(rest, stdout, stderr)
	case "standby", "takeover":
		return moveCmd(cmd, rest, stdout, stderr)
	case "import-heartbeat":
		return importHeartbeat(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "hapbx: unknown command %q\n%s", cmd, usage)
		return 2
	}
}

func configFlag(cmd string, args []string, stderr io.Writer) (string, int) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "/etc/hapbx/hapbx.yaml", "configuration file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", 0
		}
		return "", 2
	}
	return *path, 0
}

// withConfig runs one of the commands that take -c FILE.
func withConfig(cmd, path string, stdout, stderr io.Writer) int {
	switch cmd {
	case "run":
		return runDaemon(path, stderr)
	case "agent":
		return runAgent(path, stderr)
	case "release-vip":
		return releaseVIP(path, stdout, stderr)
	case "witness":
		return runWitness(path, stderr)
	}
	if _, _, err := loadAny(path); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok\n", path)
	return 0
}
