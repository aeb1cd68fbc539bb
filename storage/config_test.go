package storage

import (
	"bufio"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func bufioScanner(s string) *bufio.Scanner { return bufio.NewScanner(strings.NewReader(s)) }

func TestConfigDecodeAndValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	cases := []struct {
		name, yaml string
		errs       []string
	}{
		{name: "commands", yaml: `
listen: 127.0.0.1:7790
token_file: /etc/hapbx/agent.token
drbd: {resource: r0, timeout: 5s}
filesystem: {device: /dev/drbd0, mount_point: /replica, type: ext3, options: "noatime,data=ordered", timeout: 20s}
service: {unit: "", start_command: "/etc/init.d/asterisk start", stop_command: "/etc/init.d/asterisk stop", timeout: 15s}
ready_timeout: 45s
fence: {command: "ipmitool -H bmc-b chassis power off", timeout: 20s, safety_delay: 2s}
`},
		{name: "everything wrong", yaml: `
listen: "nowhere"
token_file: ""
drbd: {resource: "r 0", drbdadm: "", timeout: 0s}
filesystem: {device: "", mount_point: "replica", type: "", timeout: -1s}
service: {unit: asterisk, start_command: x, timeout: 0s}
ready_timeout: 0s
fence: {timeout: 0s, safety_delay: -1s}
`, errs: []string{
			`listen: must be ip:port, got "nowhere"`, "token_file: must be set when listen is set",
			`drbd.resource: must be a plain resource name, got "r 0"`, "drbd.drbdadm: must be set", "drbd.timeout: must be > 0",
			"filesystem.device: must be set", `filesystem.mount_point: must be an absolute path, got "replica"`,
			"filesystem.type: must be set", "filesystem.timeout: must be > 0",
			"service: set either unit or start_command/stop_command, not both", "service.timeout: must be > 0",
			"ready_timeout: must be > 0", "fence.timeout: must be > 0", "fence.safety_delay: must be >= 0",
		}},
		{name: "start without stop", yaml: "service: {unit: \"\", start_command: x}\n", errs: []string{"service.stop_command: must be set with start_command"}},
		{name: "no service", yaml: "service: {unit: \"\"}\n", errs: []string{"service: set unit or start_command and stop_command"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if err := yaml.Unmarshal([]byte(c.yaml), &cfg); err != nil {
				t.Fatal(err)
			}
			err := cfg.Validate()
			if len(c.errs) == 0 {
				if err != nil {
					t.Fatalf("unexpected: %v", err)
				}
				if cfg.ReadyTimeout != 45*time.Second || cfg.Fence.SafetyDelay != 2*time.Second || cfg.DRBD.Drbdadm != "drbdadm" {
					t.Fatalf("decoded wrong: %+v", cfg)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "|") != strings.Join(c.errs, "|") {
				t.Fatalf("errors:\n%s\nwant:\n%s", err, strings.Join(c.errs, "\n"))
			}
		})
	}
}

func TestParseMountOptions(t *testing.T) {
	flags, data := parseMountOptions("noatime, ro,size=1m,mode=0755,,defaults")
	if flags != mountFlags["noatime"]|mountFlags["ro"] || data != "size=1m,mode=0755" {
		t.Fatalf("flags %#x data %q", flags, data)
	}
}
