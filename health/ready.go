package health

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// ReadyCheck answers "does this Asterisk serve?" on demand, for the storage
// agent of a PBX node (storage.ReadyChecker): its SIP stack answers an
// OPTIONS with an alive code and, when t.AMI is set, a manager session is
// logged in and has seen FullyBooted. It keeps no up/down state of its own.
type ReadyCheck struct {
	target  Target
	timeout time.Duration
	codes   codeSet
	ami     *AMIClient
}

// NewReadyCheck builds the check for t with cfg's timeout, alive codes and
// AMI ping interval. The AMI session reconnects at most amiBackoffMax
// apart (a short bound: the Asterisk it watches is expected to be stopped
// for long spells and must be seen booted soon after its start).
func NewReadyCheck(t Target, cfg Config, amiBackoffMax time.Duration, log *zap.Logger) (*ReadyCheck, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("health: invalid config: %w", err)
	}
	if err := validateTargets([]Target{t}); err != nil {
		return nil, err
	}
	codes, _ := newCodeSet(cfg.AliveCodes) // validated above
	r := &ReadyCheck{target: t, timeout: cfg.Timeout, codes: codes}
	if t.AMI != nil {
		if amiBackoffMax <= 0 {
			amiBackoffMax = cfg.AMIBackoffMax
		}
		r.ami = NewAMIClient(AMIClientConfig{
			Address: t.AMI.Address, Username: t.AMI.Username, Secret: t.AMI.Secret,
			PingInterval: cfg.Interval, Timeout: cfg.Timeout,
			BackoffMin: min(100*time.Millisecond, amiBackoffMax), BackoffMax: amiBackoffMax,
		}, log)
	}
	return r, nil
}

// Run keeps the AMI session until ctx ends (returns at once without AMI).
func (r *ReadyCheck) Run(ctx context.Context) error {
	if r.ami == nil {
		<-ctx.Done()
		return nil
	}
	return r.ami.Run(ctx)
}

// Ready returns nil when the SIP stack answers with an alive code and the
// manager (if configured) is fully booted; else why not.
func (r *ReadyCheck) Ready(ctx context.Context) error {
	code, err := sipProbe(ctx, r.target, r.timeout)
	if err != nil {
		return fmt.Errorf("sip %s: %w", r.target.Address, err)
	}
	if !r.codes.alive(code) {
		return fmt.Errorf("sip %s: OPTIONS answered %d", r.target.Address, code)
	}
	if r.ami != nil {
		if st := r.ami.State(); !st.Ready() {
			return fmt.Errorf("ami %s: %s", r.target.AMI.Address, st.Reason())
		}
	}
	return nil
}
