package debian

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The man page names every command of `hapbx help` (the usage text in
// cmd/hapbx/internal/app/cli.go), so a new command does not ship
// undocumented.
func TestManPageCommands(t *testing.T) {
	cli, err := os.ReadFile(filepath.Join(repoRoot, "cmd", "hapbx", "internal", "app", "cli.go"))
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)const usage = `(.*?)`").FindSubmatch(cli)
	if block == nil {
		t.Fatal("no usage text in cli.go")
	}
	var cmds []string
	for _, m := range regexp.MustCompile(`(?m)^  ([a-z][a-z-]+)\b`).FindAllSubmatch(block[1], -1) {
		cmds = append(cmds, string(m[1]))
	}
	if len(cmds) < 8 {
		t.Fatalf("found %d commands in the usage text (%q): the pattern is broken", len(cmds), cmds)
	}
	man, err := os.ReadFile("hapbx.1")
	if err != nil {
		t.Fatal(err)
	}
	// Commands start a .TP item: .B name, .BI "name ..., .BR name (hyphens escaped).
	for _, c := range cmds {
		esc := strings.ReplaceAll(c, "-", `\-`)
		if !regexp.MustCompile(`(?m)^\.B[IR]? "?` + regexp.QuoteMeta(esc) + `\b`).Match(man) {
			t.Errorf("hapbx.1 does not document the command %s", c)
		}
	}
}
