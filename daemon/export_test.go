package daemon

// ReservedBytes returns the disk space in bytes promised to transfers in
// progress.
func (s *Server) ReservedBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserved
}
