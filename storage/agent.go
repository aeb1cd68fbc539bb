package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// StartOptions modify Start.
type StartOptions struct {
	// Force is the operator's override: promote with `drbdadm primary
	// --force` and skip the split-brain, peer-role, disk-state and fencing
	// checks. DRBD itself still refuses a second primary while connected.
	Force bool `json:"force"`
	// PeerDown is the failover coordinator's word that it already made the
	// old holder give up the disk, so the agent need not fence it again.
	// Nil (an operator's start, an older proxy) keeps the agent's own
	// fencing. The split-brain, peer-role and disk checks always run.
	PeerDown *PeerDown `json:"peer_down,omitempty"`
}

// How the coordinator made the old holder give up the disk (PeerDown.How).
const (
	// PeerStopped: the peer's agent stopped its group and answered with
	// its DRBD Secondary.
	PeerStopped = "stopped"
	// PeerFenced: the peer's fence command (power off) exited 0.
	PeerFenced = "fenced"
	// PeerDisconnected: the coordinator, having no fence command, waited
	// until this node's DRBD showed the peer disconnected and not Primary,
	// plus PeerDown.SafetyDelay (a PeerDisconnectFencer).
	PeerDisconnected = "disconnected"
)

// PeerDown says which node the coordinator stopped or fenced, and how,
// right before asking this node to start (see the package doc for when the
// agent trusts it).
type PeerDown struct {
	// Node is the old holder's backend name (for logs: it need not be its
	// DRBD connection name).
	Node string `json:"node"`
	// How is PeerStopped, PeerFenced or PeerDisconnected.
	How string `json:"how"`
	// SafetyDelay is, for PeerDisconnected, the delay the coordinator
	// waited after seeing the disconnection.
	SafetyDelay time.Duration `json:"safety_delay_ns,omitempty"`
}

// Validate reports a PeerDown the agent cannot act on.
func (p PeerDown) Validate() error {
	var errs []error
	if p.Node == "" {
		errs = append(errs, errors.New("peer_down.node: must not be empty"))
	}
	switch p.How {
	case PeerStopped, PeerFenced, PeerDisconnected:
	default:
		errs = append(errs, fmt.Errorf("peer_down.how: must be %s, %s or %s, got %q", PeerStopped, PeerFenced, PeerDisconnected, p.How))
	}
	if p.SafetyDelay < 0 {
		errs = append(errs, fmt.Errorf("peer_down.safety_delay_ns: must be >= 0, got %s", p.SafetyDelay))
	}
	return errors.Join(errs...)
}

// StepReport is the outcome of one step of a start, stop or rollback.
type StepReport struct {
	Step     string        `json:"step"`
	Op       string        `json:"op"`
	Duration time.Duration `json:"duration_ns"`
	// ReadyAfter is, for the service start, the service's own time from its
	// start command to the passing readiness check (part of Duration).
	ReadyAfter time.Duration `json:"ready_after_ns,omitempty"`
	Error      string        `json:"error,omitempty"`
}

// Report is the outcome of a Start or Stop.
type Report struct {
	Op       string        `json:"op"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Steps    []StepReport  `json:"steps"`
	Error    string        `json:"error,omitempty"`
}

// Overhead is the group's own time: the whole duration minus the service's
// own start-to-ready time.
func (r Report) Overhead() time.Duration {
	d := r.Duration
	for _, s := range r.Steps {
		d -= s.ReadyAfter
	}
	return d
}

// Status is the agent's view of its node, served on GET /agent/v1/status.
type Status struct {
	// State is the group state: stopped, starting, started, stopping, failed.
	State string `json:"state"`
	// DRBDRole, Disk, PeerRole, PeerDisk and Connection flatten the first
	// peer of DRBD for dashboards; DRBD holds all of it.
	DRBDRole   string    `json:"drbd_role"`
	Disk       string    `json:"disk"`
	PeerRole   string    `json:"peer_role"`
	PeerDisk   string    `json:"peer_disk"`
	Connection string    `json:"connection"`
	DRBD       DRBDState `json:"drbd"`
	// Mounted is the source mounted on the mount point, "" when none.
	Mounted string `json:"mounted"`
	// Service is "active", "inactive" or "unknown" as last checked.
	Service string `json:"service"`
	// SplitBrain is set from DRBD events/status until an operator clears it.
	// EventsFollowing is true while `drbdsetup events2` delivers live
	// changes (after its initial dump).
	EventsFollowing  bool   `json:"events_following"`
	SplitBrain       bool   `json:"split_brain"`
	SplitBrainReason string `json:"split_brain_reason,omitempty"`
	// LastError is the most recent error; it stays after a recovery.
	LastError  string `json:"last_error,omitempty"`
	LastReport Report `json:"last_report"`
}

// Agent runs the node's resource group: DRBD promotion, mount, service.
type Agent struct {
	cfg    Config
	log    *zap.Logger
	m      *metrics
	drbd   drbdStep
	fs     fsStep
	svc    *serviceStep
	fencer Fencer

	// monitorInterval is how often Run re-checks a started group.
	monitorInterval time.Duration

	op sync.Mutex // serialises Start and Stop

	mu         sync.Mutex
	state      string
	drbdState  DRBDState
	service    string
	splitBrain string // reason; "" when none
	following  bool
	lastErr    string
	lastReport Report
}

// Option configures an Agent beyond its Config.
type Option func(*Agent)

// WithReadyChecker sets the check that completes the service step (the
// health package's SIP OPTIONS + AMI FullyBooted check in production).
// Without it, a systemd unit is ready when `systemctl is-active` says so and
// start commands are ready when they return.
func WithReadyChecker(r ReadyChecker) Option { return func(a *Agent) { a.svc.ready = r } }

// New builds an agent. reg may be nil (no metrics exported).
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer, opts ...Option) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("storage: invalid config: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("storage: register metrics: %w", err)
	}
	a := &Agent{
		cfg:             cfg,
		log:             log,
		m:               m,
		drbd:            drbdStep{cfg: cfg.DRBD},
		fs:              fsStep{cfg: cfg.Filesystem},
		svc:             &serviceStep{cfg: cfg.Service, readyTimeout: cfg.ReadyTimeout, poll: 50 * time.Millisecond},
		monitorInterval: 2 * time.Second,
		state:           StateStopped,
		service:         "unknown",
		drbdState:       DRBDState{Resource: cfg.DRBD.Resource, Role: RoleUnknown, Disk: DiskUnknown},
	}
	a.fencer = NewFencer(cfg.Fence, a.DRBDState)
	for _, o := range opts {
		o(a)
	}
	m.groupState.Set(stateValue[StateStopped])
	m.setDRBD(a.drbdState)
	return a, nil
}

// DRBDState reads `drbdadm status` afresh (and updates the status kept).
func (a *Agent) DRBDState(ctx context.Context) (DRBDState, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DRBD.Timeout)
	defer cancel()
	st, err := a.drbd.status(ctx)
	if err != nil {
		return DRBDState{}, err
	}
	a.setDRBDState(st)
	a.noteStandAlone(st, "drbdadm status")
	return st, nil
}

// setDRBDState keeps st as the DRBD state and exports its disk states.
func (a *Agent) setDRBDState(st DRBDState) {
	a.mu.Lock()
	a.drbdState = st
	a.mu.Unlock()
	a.m.setDRBD(st)
}

// Status returns a snapshot; the mount state is read live.
func (a *Agent) Status() Status {
	mounted, err := MountedAt(a.cfg.Filesystem.MountPoint)
	if err != nil {
		mounted = "?"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.drbdState.Peer()
	return Status{
		State:    a.state,
		DRBDRole: a.drbdState.Role, Disk: a.drbdState.Disk,
		PeerRole: p.Role, PeerDisk: p.PeerDisk, Connection: p.Connection,
		DRBD:             a.drbdState,
		Mounted:          mounted,
		Service:          a.service,
		EventsFollowing:  a.following,
		SplitBrain:       a.splitBrain != "",
		SplitBrainReason: a.splitBrain,
		LastError:        a.lastErr,
		LastReport:       a.lastReport,
	}
}

func (a *Agent) setState(s string) {
	a.mu.Lock()
	a.state = s
	a.mu.Unlock()
	a.m.groupState.Set(stateValue[s])
}

// setSplitBrain records a split brain loudly; it stays until cleared.
func (a *Agent) setSplitBrain(reason string) {
	a.mu.Lock()
	first := a.splitBrain == ""
	if first {
		a.splitBrain = reason
	}
	a.mu.Unlock()
	if first {
		a.m.splitBrain.Set(1)
		a.log.Error("DRBD split brain detected: automatic promotion blocked until an operator resolves it and clears it",
			zap.String("resource", a.cfg.DRBD.Resource), zap.String("reason", reason))
	}
}

func (a *Agent) noteStandAlone(st DRBDState, source string) {
	for _, p := range st.Peers {
		if p.Connection == ConnStandAlone {
			a.setSplitBrain(fmt.Sprintf("%s: connection to %s is StandAlone", source, p.Name))
		}
	}
}

// ClearSplitBrain is the operator's acknowledgement that a split brain was
// resolved (e.g. `drbdadm connect --discard-my-data` on the victim).
func (a *Agent) ClearSplitBrain() {
	a.mu.Lock()
	was := a.splitBrain
	a.splitBrain = ""
	a.mu.Unlock()
	a.m.splitBrain.Set(0)
	if was != "" {
		a.log.Warn("DRBD split brain cleared by operator", zap.String("was", was))
	}
}

func (a *Agent) steps() []step { return []step{a.drbd, a.fs, a.svc} }

// runStep runs op (start, stop or rollback, which stops) on s with the
// step's timeout and records it.
func (a *Agent) runStep(ctx context.Context, s step, op string, force bool) StepReport {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	var readyAfter time.Duration
	if sv, ok := s.(*serviceStep); ok {
		sv.readyAfter = &readyAfter
		defer func() { sv.readyAfter = nil }()
	}
	t0 := time.Now()
	var err error
	if op == "start" {
		err = s.start(ctx, force)
	} else {
		err = s.stop(ctx)
	}
	d := time.Since(t0)
	a.m.stepDuration.WithLabelValues(s.name(), op).Observe(d.Seconds())
	r := StepReport{Step: s.name(), Op: op, Duration: d, ReadyAfter: readyAfter}
	if err != nil {
		r.Error = err.Error()
		a.m.failures.WithLabelValues(s.name()).Inc()
		a.log.Error("resource group step failed", zap.String("step", s.name()), zap.String("op", op), zap.Duration("took", d), zap.Error(err))
	} else {
		a.log.Info("resource group step done", zap.String("step", s.name()), zap.String("op", op), zap.Duration("took", d))
	}
	return r
}

// Start promotes DRBD, mounts the file system and starts the service, in
// that order. Unless opts.Force, it first refuses when a split brain is
// uncleared, when DRBD shows a peer Primary or the local disk not UpToDate,
// and fences the peer when it is not connected, unless opts.PeerDown says
// the coordinator already did (see peerFencer). A failed step rolls back
// the steps already run, in reverse. The report says what happened.
func (a *Agent) Start(ctx context.Context, opts StartOptions) (Report, error) {
	a.op.Lock()
	defer a.op.Unlock()
	rep := Report{Op: "start", Started: time.Now()}
	finish := func(err error) (Report, error) {
		rep.Duration = time.Since(rep.Started)
		a.mu.Lock()
		if err != nil {
			rep.Error = err.Error()
			a.lastErr = rep.Error
		}
		a.lastReport = rep
		a.mu.Unlock()
		return rep, err
	}
	if a.Status().State == StateStarted {
		return finish(nil)
	}
	if err := a.precheck(ctx, opts, &rep); err != nil {
		a.m.failures.WithLabelValues("precheck").Inc()
		a.log.Error("refusing to start resource group", zap.Bool("force", opts.Force), zap.Error(err))
		a.setState(StateStopped)
		return finish(err)
	}
	a.setState(StateStarting)
	steps := a.steps()
	for i, s := range steps {
		r := a.runStep(ctx, s, "start", opts.Force)
		rep.Steps = append(rep.Steps, r)
		if r.Error == "" {
			continue
		}
		err := fmt.Errorf("%w: %s start: %s", ErrStepFailed, s.name(), r.Error)
		// Roll back the failed step too: a service whose readiness timed
		// out is running, a mount that timed out may still land.
		for j := i; j >= 0; j-- {
			rr := a.runStep(context.WithoutCancel(ctx), steps[j], "rollback", false)
			rep.Steps = append(rep.Steps, rr)
			if rr.Error != "" {
				err = errors.Join(err, fmt.Errorf("rollback %s: %s", steps[j].name(), rr.Error))
			}
		}
		a.setState(StateFailed)
		return finish(err)
	}
	// Publish the new role now rather than when events2 reports it, so the
	// status a caller reads next (and the monitor) is already right.
	if _, err := a.DRBDState(ctx); err != nil {
		a.log.Warn("drbdadm status after start failed", zap.Error(err))
	}
	a.setState(StateStarted)
	a.mu.Lock()
	a.service = "active"
	a.mu.Unlock()
	a.log.Info("resource group started", zap.Duration("took", time.Since(rep.Started)))
	return finish(nil)
}

func (a *Agent) precheck(ctx context.Context, opts StartOptions, rep *Report) error {
	if opts.Force {
		a.log.Warn("operator forced start: skipping split-brain, peer-role, disk and fencing checks")
		return nil
	}
	// Read afresh first: the read itself flags a StandAlone connection.
	st, err := a.DRBDState(ctx)
	if err != nil {
		return fmt.Errorf("read DRBD state before promotion: %w", err)
	}
	a.mu.Lock()
	sb := a.splitBrain
	a.mu.Unlock()
	if sb != "" {
		return fmt.Errorf("%w: %s", ErrSplitBrain, sb)
	}
	if st.PeerPrimary() {
		return fmt.Errorf("%w: resource %s peer %s role %s", ErrPeerPrimary, st.Resource, st.Peer().Name, st.Peer().Role)
	}
	if st.Disk != DiskUpToDate {
		return fmt.Errorf("%w: resource %s disk %s", ErrDiskNotUpToDate, st.Resource, st.Disk)
	}
	if st.Role == RolePrimary || st.AllPeersConnected() {
		// Connected peers are Secondary (checked above): DRBD itself
		// arbitrates the promotion.
		return nil
	}
	fencer, why := a.peerFencer(st, opts.PeerDown)
	if fencer == nil {
		rep.Steps = append(rep.Steps, StepReport{Step: "fence", Op: "skipped"})
		a.log.Info("peer not connected: not fencing it again, the coordinator did",
			zap.String("peer", st.Peer().Name), zap.String("connection", st.Peer().Connection),
			zap.String("node", opts.PeerDown.Node), zap.String("how", opts.PeerDown.How))
		return nil
	}
	if why != "" {
		a.log.Warn("peer not connected: fencing it despite the coordinator's word", zap.String("why", why),
			zap.String("node", opts.PeerDown.Node), zap.String("how", opts.PeerDown.How))
	}
	t0 := time.Now()
	err = fencer.Fence(ctx)
	r := StepReport{Step: "fence", Op: "start", Duration: time.Since(t0)}
	if err != nil {
		a.m.failures.WithLabelValues("fence").Inc()
		r.Error = err.Error()
		rep.Steps = append(rep.Steps, r)
		if !errors.Is(err, ErrFenceFailed) {
			err = fmt.Errorf("%w: %w", ErrFenceFailed, err)
		}
		return err
	}
	rep.Steps = append(rep.Steps, r)
	a.log.Warn("peer not connected: fenced before promotion", zap.String("peer", st.Peer().Name), zap.String("connection", st.Peer().Connection))
	return nil
}

// peerFencer is what still has to run before promoting with a peer not
// connected (and not Primary, checked before): nil when the coordinator's
// pd already covers it, else the agent's fencer (or, for a shorter
// disconnection wait than ours, the rest of our safety delay). why says
// why a pd given was not enough.
func (a *Agent) peerFencer(st DRBDState, pd *PeerDown) (Fencer, string) {
	if pd == nil {
		return a.fencer, ""
	}
	if err := pd.Validate(); err != nil {
		return a.fencer, err.Error()
	}
	// The word covers one node; DRBD names its peers by connection name,
	// which the coordinator does not know. With exactly one peer not
	// connected (two-node DRBD), that peer is the node it stopped or
	// fenced: the coordinator only does so to the node that held the group.
	var gone int
	for _, p := range st.Peers {
		if p.Connection != ConnConnected {
			gone++
		}
	}
	if gone != 1 {
		return a.fencer, fmt.Sprintf("%d DRBD peers not connected; the word covers one", gone)
	}
	switch pd.How {
	case PeerStopped, PeerFenced:
		return nil, ""
	}
	// PeerDisconnected: the coordinator ran the same wait as our
	// PeerDisconnectFencer; never wait less in total than our own safety
	// delay, and never replace a fence command (a power-off) by a wait.
	pf, ok := a.fencer.(PeerDisconnectFencer)
	if !ok {
		return a.fencer, "a disconnection wait does not replace this agent's fence command"
	}
	if pd.SafetyDelay >= pf.SafetyDelay {
		return nil, ""
	}
	pf.SafetyDelay -= pd.SafetyDelay
	return pf, fmt.Sprintf("the coordinator waited %s of this agent's safety delay %s", pd.SafetyDelay, pf.SafetyDelay+pd.SafetyDelay)
}

// Stop stops the service, unmounts and demotes DRBD, in that order. Every
// step is attempted even when an earlier one failed; the errors are joined.
func (a *Agent) Stop(ctx context.Context) (Report, error) {
	a.op.Lock()
	defer a.op.Unlock()
	rep := Report{Op: "stop", Started: time.Now()}
	a.setState(StateStopping)
	var err error
	steps := a.steps()
	for i := len(steps) - 1; i >= 0; i-- {
		r := a.runStep(ctx, steps[i], "stop", false)
		rep.Steps = append(rep.Steps, r)
		if r.Error != "" {
			err = errors.Join(err, fmt.Errorf("%w: %s stop: %s", ErrStepFailed, steps[i].name(), r.Error))
		}
	}
	if _, serr := a.DRBDState(ctx); serr != nil {
		a.log.Warn("drbdadm status after stop failed", zap.Error(serr))
	}
	rep.Duration = time.Since(rep.Started)
	a.mu.Lock()
	if err != nil {
		rep.Error = err.Error()
		a.lastErr = rep.Error
	} else {
		a.service = "inactive"
	}
	a.lastReport = rep
	a.mu.Unlock()
	if err != nil {
		a.setState(StateFailed)
	} else {
		a.setState(StateStopped)
	}
	return rep, err
}

// Run follows `drbdsetup events2 RES` (restarting it when it exits) and
// monitors the started service until ctx ends. The control API (Handler)
// is the caller's to serve, on cfg.Listen.
func (a *Agent) Run(ctx context.Context) error {
	if _, err := a.DRBDState(ctx); err != nil {
		a.log.Warn("initial drbdadm status failed", zap.Error(err))
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.followEvents(ctx) }()
	go func() { defer wg.Done(); a.monitor(ctx) }()
	wg.Wait()
	return nil
}

func (a *Agent) followEvents(ctx context.Context) {
	for ctx.Err() == nil {
		err := a.events(ctx)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("drbdsetup events2 ended; restarting", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// events runs one events2 stream to its end.
func (a *Agent) events(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, a.cfg.DRBD.Drbdsetup, "events2", a.cfg.DRBD.Resource)
	// Pdeathsig: an agent killed with SIGKILL must not leave the stream
	// running (it would only notice at its next write).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s events2 %s: %w", a.cfg.DRBD.Drbdsetup, a.cfg.DRBD.Resource, err)
	}
	st := DRBDState{Resource: a.cfg.DRBD.Resource, Role: RoleUnknown, Disk: DiskUnknown}
	initial := true
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		ev, err := ParseEvent(sc.Text())
		if err != nil {
			a.log.Debug("ignoring events2 line", zap.Error(err))
			continue
		}
		if ev.SplitBrain() {
			a.setSplitBrain(fmt.Sprintf("events2: %s", sc.Text()))
		}
		if ev.Verb == "exists" && ev.Object == "-" {
			initial = false
		}
		before := st
		st = st.Apply(ev)
		if ev.Fields["connection"] == ConnStandAlone && !initial {
			a.setSplitBrain(fmt.Sprintf("events2: connection %s went StandAlone", ev.Fields["conn-name"]))
		}
		if !initial {
			if before.Role != st.Role {
				a.log.Info("DRBD role changed", zap.String("from", before.Role), zap.String("to", st.Role))
			}
			a.setDRBDState(st)
		}
		if ev.Verb == "exists" && ev.Object == "-" {
			a.noteStandAlone(st, "events2")
			a.mu.Lock()
			a.following = true
			a.mu.Unlock()
		}
	}
	a.mu.Lock()
	a.following = false
	a.mu.Unlock()
	return cmd.Wait()
}

func (a *Agent) monitor(ctx context.Context) {
	t := time.NewTicker(a.monitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if a.Status().State != StateStarted || !a.op.TryLock() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, a.monitorInterval)
		var check ReadyChecker = a.svc.ready
		if check == nil && a.cfg.Service.Unit != "" {
			check = ReadyFunc(func(ctx context.Context) error { return unitActive(ctx, a.cfg.Service.Unit) })
		}
		var err error
		if check != nil {
			err = check.Ready(cctx)
		}
		if err == nil {
			a.mu.Lock()
			role := a.drbdState.Role
			a.mu.Unlock()
			if role != RolePrimary {
				err = fmt.Errorf("DRBD resource %s is %s, not Primary", a.cfg.DRBD.Resource, role)
			}
		}
		if err == nil {
			if m, merr := MountedAt(a.cfg.Filesystem.MountPoint); merr != nil || m == "" {
				err = fmt.Errorf("%s not mounted on %s (%v)", a.cfg.Filesystem.Device, a.cfg.Filesystem.MountPoint, merr)
			}
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			// A started group that stopped serving is failed: the
			// coordinator sees it in the status, and a new Start restarts
			// what is missing (every start step is idempotent).
			a.log.Error("started resource group no longer serves", zap.Error(err))
			a.m.failures.WithLabelValues("monitor").Inc()
			a.mu.Lock()
			a.service = "inactive"
			a.lastErr = "monitor: " + err.Error()
			a.mu.Unlock()
			a.setState(StateFailed)
		}
		a.op.Unlock()
	}
}
