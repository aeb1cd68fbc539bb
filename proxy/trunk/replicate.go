package trunk

import (
	"go.uber.org/zap"
)

// Set is a state channel of the cluster (cluster.StateSource): the VIP
// holder sends each registration's State before every REGISTER it sends
// and after every round; the
// other nodes take it over (Registration.Continue), so the one that takes
// the VIP refreshes the same registration (same Call-ID, next CSeq) when
// it is due, without a new one the provider would notice.

// StateSnapshot returns the State of every registration that has one, for
// a node that joins.
func (s *Set) StateSnapshot() [][]byte {
	var out [][]byte
	for _, mb := range s.order {
		if mb.reg == nil {
			continue
		}
		if b, err := mb.reg.State().Marshal(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// ApplyState takes over the registrations the holder sent. The holder's
// own state rules: it ignores them. A record for an unknown trunk, or an
// older one of the same registration (records may come twice and out of
// order), is dropped.
func (s *Set) ApplyState(records [][]byte) {
	if s.holder != nil && s.holder() {
		return
	}
	for _, rec := range records {
		st, err := UnmarshalState(rec)
		if err != nil {
			s.log.Warn("trunk registration state dropped", zap.Error(err))
			continue
		}
		mb, ok := s.byName[st.Trunk]
		if !ok || mb.reg == nil || st.CallID == "" {
			continue
		}
		if cur := mb.reg.State(); cur.CallID == st.CallID && cur.CSeq >= st.CSeq {
			continue
		}
		mb.reg.Continue(st)
	}
}

// StateChanges is called once by the cluster, before Run: send carries a
// record to the other nodes, holder tells whether this node holds the VIP.
func (s *Set) StateChanges(send func(record []byte) error, holder func() bool) {
	s.out, s.holder = send, holder
}

// publish sends a registration's state to the other nodes when this node
// is the holder.
func (s *Set) publish(st State) {
	if s.out == nil || s.holder == nil || !s.holder() {
		return
	}
	b, err := st.Marshal()
	if err == nil {
		err = s.out(b)
	}
	if err != nil {
		s.log.Debug("trunk registration state not sent", zap.String("trunk", st.Trunk), zap.Error(err))
	}
}
