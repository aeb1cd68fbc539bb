package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The configurations the lab writes pass `hapbx check-config` (proxies and
// witness), with and without media and failback.
func TestConfigsPassCheckConfig(t *testing.T) {
	if hapbxBin == "" {
		t.Skip("no hapbx binary: set HAPBX_BIN (make test does) or run as root with sipp and nft, where TestMain builds one")
	}
	for _, opt := range []Options{{}, {Media: true, Failback: true, Trunk: true}} {
		dir := t.TempDir()
		l := &Lab{opt: opt, Key: filepath.Join(dir, "cluster.key")}
		l.opt.Dir = dir
		if err := os.WriteFile(l.Key, []byte("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := l.WriteConfigs(); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"proxy1", "proxy2", "witness"} {
			if out, err := exec.Command(hapbxBin, "check-config", "-c", l.configPath(n)).CombinedOutput(); err != nil {
				t.Errorf("%s (%+v): %v\n%s", n, opt, err, out)
			}
		}
	}
}
