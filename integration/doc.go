// Package integration holds tests that build the real ferry and ferryd
// binaries and drive them as separate processes over loopback sockets,
// with faults injected from outside: a fault proxy between sender and
// daemon (internal/faultproxy), signals to either process, raw peers that
// speak garbage, and hostile names. They check what a user can observe —
// exit codes, --json records, log lines, and files bit-identical to their
// source under the hash b3sum prints — and import no ferry package but the
// proxy.
//
// TestMain builds both binaries once. Slow cases skip under -short.
//
// Environment: FERRY_SOAK=1 runs the long form of the kill -9 matrix
// (killmatrix_test.go); FERRY_KILL_SEED=N repeats the kill points of a
// logged run.
package integration
