package daemon

// SkipCommitDirSync makes s leave out the directory fsync after a
// committed file is linked into place. Only the canary of crash_test.go
// uses it: the power-loss sweep must catch the loss this causes.
func SkipCommitDirSync(s *DirStore) { s.skipCommitDirSync = true }

// SkipCommitDataSync makes s leave out a group commit's data sync
// (SyncStrategy.SyncFiles). Only the canaries of crash_batch_test.go use
// it.
func SkipCommitDataSync(s *DirStore) { s.skipCommitDataSync = true }
