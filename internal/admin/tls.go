package admin

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/hapbx/hapbx/internal/secretfile"
)

// ServerTLS is the TLS configuration of the admin interface: the
// certificate chain in certFile and its key in keyFile (a secret file).
func ServerTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := secretfile.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// ClientTLS is the TLS configuration the CLI uses to reach the admin
// interface of the same configuration file: it trusts the server only if
// it presents the first certificate of certFile, whatever names the
// certificate holds (the CLI may connect to 127.0.0.1 for a listener on
// all addresses) and whoever issued it.
func ClientTLS(certFile string) (*tls.Config, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("admin.tls.cert: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("admin.tls.cert: %s holds no PEM certificate", certFile)
	}
	want := block.Bytes
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain and names are not what is checked: the exact
		// certificate is, below.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], want) {
				return errors.New("the admin interface presented a certificate other than admin.tls.cert")
			}
			return nil
		},
	}, nil
}

// Exposed reports whether listen (host:port) is reachable from other
// hosts: any address but a loopback one (an unspecified address listens
// on all of them; a name other than localhost may resolve anywhere).
func Exposed(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return true
	}
	if host == "localhost" {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err != nil || !ip.Unmap().IsLoopback()
}
