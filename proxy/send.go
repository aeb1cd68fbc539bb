package proxy

import (
	"context"
	"errors"
	"strings"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// errNotListening is Do's error before Listen.
var errNotListening = errors.New("proxy: not listening")

// Do sends req, a request of hapbx's own (a trunk's REGISTER or OPTIONS
// keepalive), as a client transaction from the proxy's sockets, with the
// proxy's Via (sip.advertise), to the destination and transport set on it,
// and returns its final response; ctx's error when none came in time. It
// is the Sender of package proxy/trunk.
func (p *Proxy) Do(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	if p.wire == nil {
		return nil, errNotListening
	}
	t := target{addr: req.Destination(), transport: strings.ToLower(req.Transport())}
	req.PrependHeader(p.via(t.transport, "o"+sip.GenerateTagN(16)))
	p.address(req, t)
	tx, err := p.wire.TransactionRequest(ctx, req, sipgo.ClientRequestOption(keepHeaders))
	if err != nil {
		return nil, err
	}
	defer tx.Terminate()
	for {
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			return res, nil
		case <-tx.Done():
			if err := tx.Err(); err != nil {
				return nil, err
			}
			return nil, errors.New("proxy: transaction ended without a final response")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
