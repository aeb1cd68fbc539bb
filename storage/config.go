package storage

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Config is the `agent:` section: the node-local resource group (DRBD
// resource, file system, Asterisk service), its control API and fencing.
type Config struct {
	// Listen is the address of the HTTP control API, e.g. "127.0.0.1:7790".
	Listen string `yaml:"listen"`
	// TokenFile holds the bearer token that POST requests must present.
	TokenFile string `yaml:"token_file"`
	// DRBD names the replicated resource and the tools that drive it.
	DRBD DRBDConfig `yaml:"drbd"`
	// Filesystem is mounted on the DRBD device once it is Primary.
	Filesystem FilesystemConfig `yaml:"filesystem"`
	// Service is the Asterisk service started last and stopped first.
	Service ServiceConfig `yaml:"service"`
	// ReadyTimeout bounds the wait for the readiness check after the
	// service start command returned.
	ReadyTimeout time.Duration `yaml:"ready_timeout"`
	// Fence is how this agent makes sure the peer is gone before it promotes
	// while the DRBD peer is not connected.
	Fence FenceConfig `yaml:"fence"`
}

// DRBDConfig describes the DRBD resource of the group.
type DRBDConfig struct {
	Resource  string        `yaml:"resource"`
	Drbdadm   string        `yaml:"drbdadm"`
	Drbdsetup string        `yaml:"drbdsetup"`
	Timeout   time.Duration `yaml:"timeout"`
}

// FilesystemConfig describes the mount of the replicated device.
type FilesystemConfig struct {
	Device     string        `yaml:"device"`
	MountPoint string        `yaml:"mount_point"`
	Type       string        `yaml:"type"`
	Options    string        `yaml:"options"`
	Timeout    time.Duration `yaml:"timeout"`
}

// ServiceConfig names either a systemd unit or a pair of shell commands.
type ServiceConfig struct {
	Unit         string        `yaml:"unit"`
	StartCommand string        `yaml:"start_command"`
	StopCommand  string        `yaml:"stop_command"`
	Timeout      time.Duration `yaml:"timeout"`
}

// FenceConfig selects the fencing strategy: a command (IPMI power-off, a PDU
// outlet, any script) whose exit status decides, or, with no command, waiting
// until DRBD shows the peer disconnected plus a safety delay.
type FenceConfig struct {
	Command     string        `yaml:"command"`
	Timeout     time.Duration `yaml:"timeout"`
	SafetyDelay time.Duration `yaml:"safety_delay"`
}

// DefaultConfig returns the defaults: resource r0 on /dev/drbd0 mounted on
// /replica as ext3 (the classic haresources line), systemd unit asterisk.
func DefaultConfig() Config {
	return Config{
		Listen:    "127.0.0.1:7790",
		TokenFile: "/etc/hapbx/agent.token",
		DRBD: DRBDConfig{
			Resource:  "r0",
			Drbdadm:   "drbdadm",
			Drbdsetup: "drbdsetup",
			Timeout:   10 * time.Second,
		},
		Filesystem: FilesystemConfig{
			Device:     "/dev/drbd0",
			MountPoint: "/replica",
			Type:       "ext3",
			Timeout:    30 * time.Second,
		},
		Service: ServiceConfig{
			Unit:    "asterisk.service",
			Timeout: 30 * time.Second,
		},
		ReadyTimeout: 60 * time.Second,
		Fence: FenceConfig{
			Timeout:     30 * time.Second,
			SafetyDelay: 5 * time.Second,
		},
	}
}

// Validate reports every problem of c, each as "<key.path>: <reason>".
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Listen != "" {
		if _, err := netip.ParseAddrPort(c.Listen); err != nil {
			bad("listen", "must be ip:port, got %q", c.Listen)
		}
		if c.TokenFile == "" {
			bad("token_file", "must be set when listen is set")
		}
	}
	if c.DRBD.Resource == "" {
		bad("drbd.resource", "must be set")
	} else if strings.ContainsAny(c.DRBD.Resource, " \t\n/") {
		bad("drbd.resource", "must be a plain resource name, got %q", c.DRBD.Resource)
	}
	if c.DRBD.Drbdadm == "" {
		bad("drbd.drbdadm", "must be set")
	}
	if c.DRBD.Drbdsetup == "" {
		bad("drbd.drbdsetup", "must be set")
	}
	if c.DRBD.Timeout <= 0 {
		bad("drbd.timeout", "must be > 0")
	}
	if c.Filesystem.Device == "" {
		bad("filesystem.device", "must be set")
	}
	if c.Filesystem.MountPoint == "" || !strings.HasPrefix(c.Filesystem.MountPoint, "/") {
		bad("filesystem.mount_point", "must be an absolute path, got %q", c.Filesystem.MountPoint)
	}
	if c.Filesystem.Type == "" {
		bad("filesystem.type", "must be set")
	}
	if c.Filesystem.Timeout <= 0 {
		bad("filesystem.timeout", "must be > 0")
	}
	switch {
	case c.Service.Unit != "" && (c.Service.StartCommand != "" || c.Service.StopCommand != ""):
		bad("service", "set either unit or start_command/stop_command, not both")
	case c.Service.Unit == "" && c.Service.StartCommand == "":
		bad("service", "set unit or start_command and stop_command")
	case c.Service.Unit == "" && c.Service.StopCommand == "":
		bad("service.stop_command", "must be set with start_command")
	}
	if c.Service.Timeout <= 0 {
		bad("service.timeout", "must be > 0")
	}
	if c.ReadyTimeout <= 0 {
		bad("ready_timeout", "must be > 0")
	}
	if c.Fence.Timeout <= 0 {
		bad("fence.timeout", "must be > 0")
	}
	if c.Fence.SafetyDelay < 0 {
		bad("fence.safety_delay", "must be >= 0")
	}
	return errors.Join(errs...)
}
