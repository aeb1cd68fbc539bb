package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/hapbx/hapbx/internal/testkit"
)

// writeSelfSigned makes a certificate for ip and returns the PEM paths.
func writeSelfSigned(t *testing.T, dir, ip string) (certPath, keyPath string) {
	return testkit.SelfSigned(t, dir, ip)
}

// tlsMessage plays a TLS phone with sipgo, verifying the proxy's
// certificate, and returns the final status of one MESSAGE with body.
func tlsMessage(t *testing.T, certPath, proxyAddr, body string) int {
	t.Helper()
	pemData, _ := os.ReadFile(certPath)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemData)
	ua, err := sipgo.NewUA(sipgo.WithUserAgenTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	cl, err := sipgo.NewClient(ua, sipgo.WithClientHostname(phoneIP))
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := sip.ParseAddr(proxyAddr)
	req := sip.NewRequest(sip.MESSAGE, sip.Uri{User: "202", Host: host, Port: port, UriParams: sip.HeaderParams{{K: "transport", V: "tls"}}})
	req.SetBody([]byte(body))
	req.AppendHeader(sip.NewHeader("Content-Type", "text/plain"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cl.Do(ctx, req)
	if err != nil {
		t.Fatalf("MESSAGE over TLS: %v", err)
	}
	return res.StatusCode
}
