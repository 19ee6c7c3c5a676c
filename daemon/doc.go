// Package daemon is the receiving side of ferry: a Server that runs
// sessions on any number of listeners, admits transfers (name, size, disk
// space, session limits), verifies chunks, keeps partials durable, and
// commits files under a root directory. The protocol it speaks is
// package transfer's; docs/PROTOCOL.md describes both, and the order of
// durable writes, in full.
//
// # What lives under the root
//
// The local store (DirStore on an OSFS, which resolves every name with
// os.Root, so that nothing outside the root is touched) keeps this layout:
//
//	ROOT/.ferry/                      reserved: no transfer may name it (0700)
//	ROOT/.ferry/lock                  flock'ed by the one daemon using the root (LockRoot)
//	ROOT/.ferry/tokens                the token file by default (package auth; 0600)
//	ROOT/.ferry/token-usage           each token's last use and committed bytes (best-effort)
//	ROOT/.ferry/partials/KEY.data     a transfer's bytes; only [0, durable offset) is trusted
//	ROOT/.ferry/partials/KEY.state    its state record (EncodeState), replaced only by rename
//	ROOT/.ferry/partials/KEY.tmp      a state record being written; never read
//	ROOT/NAME                         a committed file: a hard link of what was KEY.data
//
// KEY is 32 hex digits derived from the credential (the token's name,
// "" for an anonymous sender) and the destination name, so a name has one
// partial per token, only that token resumes it, and two sessions never
// share it. A
// partial's state record is written only after its data is fsync'ed
// (temp file, fsync, rename), carries the merge stack of the durable
// chunks' chaining values, so that a resume reads only the tail chunk and
// never the prefix, and a BLAKE3 checksum; a record that is missing or
// damaged means there is no partial. A committed file is
// linked into place without overwriting anything, after which the partial
// is removed. A partial whose data file is still linked at its committed
// name (a commit cut short) is never written: FinishCommit finishes it on
// the next offer, FinishCommits at start.
//
// # What is never cleaned up
//
// Like tusd's filestore, the daemon deletes nothing on its own, except
// the partial of a commit cut short (above):
//
//   - partials of transfers that are never completed (KEY.data and
//     KEY.state) stay until the same name is offered again, which resumes
//     or replaces them; there is no expiry yet;
//   - a KEY.tmp left by a crash mid-write stays until its key is synced
//     again, and a KEY.data without a state record until its name is
//     offered again;
//   - directories created for committed files are never removed;
//   - committed files belong to the operator: never deleted, never
//     overwritten.
package daemon
