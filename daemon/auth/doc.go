// Package auth is ferryd's token file: the tokens senders authenticate
// with, each with its permissions, stored as SHA-256 hashes of their
// secrets (never the secrets), and the per-token usage the daemon records
// beside it.
//
// The token file is JSON (Encode, Parse):
//
//	{"version": 1, "tokens": [{"name": "backup", "sha256": "<64 hex digits>",
//	  "created": "2026-11-30T05:20:07Z", "dest": "hosts/web1",
//	  "max_size": 0, "quota": 0, "overwrite": false}]}
//
// It is written only by Update (ferryd token add, ferryd token revoke):
// under an exclusive flock on FILE.lock, to a temporary file in the same
// directory (mode 0600), fsynced, renamed over FILE, and the directory
// fsynced; so a daemon reading it at any moment sees the old or the new
// file, whole. Load refuses a file that group or others may read or
// write (ErrInsecure), as rsync refuses such a secrets file.
//
// A secret is "ferry_" and 32 base32 digits of 160 random bits from
// crypto/rand (NewSecret). Only its SHA-256 is stored: a password KDF
// (bcrypt, argon2) exists to slow down guessing of low-entropy secrets,
// and guessing a 160-bit random secret from its hash is out of reach with
// or without one, while a KDF would cost every session's handshake
// milliseconds of CPU. Match compares hashes with crypto/subtle, over
// every token, so that its time does not depend on which token matched
// or on how much of a hash did.
package auth
