// Package debian holds no Go code: deb_test.go checks the Debian package
// that `make deb` builds from the files beside it (nfpm.yaml, the
// maintainer scripts, the sysusers.d entry, the man page) by installing
// it, running check-config on its example and purging it.
package debian
