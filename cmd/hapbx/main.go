// Command hapbx is the one hapbx binary: the proxy daemon and its operator
// commands. Everything but argument dispatch lives in packages.
package main

import (
	"os"

	"github.com/hapbx/hapbx/cmd/hapbx/internal/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
