package daemon

// HoldKey marks the partial under key as used by a session, as a session
// does while it receives into it, and returns the function that gives it
// back.
func (s *Server) HoldKey(key string) (release func()) {
	ss := &session{}
	if s.hold(key, ss) != nil {
		panic("bug: key already held")
	}
	return func() { s.release(key) }
}
