package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/ferry-dev/ferry/transfer"
)

func TestParseTo(t *testing.T) {
	tests := []struct {
		name, to, network, addr string
		usage                   bool
	}{
		{"host only gets the default port", "collector", "tcp", "collector:7219", false},
		{"host and port", "collector:9000", "tcp", "collector:9000", false},
		{"IPv4", "127.0.0.1", "tcp", "127.0.0.1:7219", false},
		{"bracketed IPv6 without port", "[::1]", "tcp", "[::1]:7219", false},
		{"bracketed IPv6 with port", "[::1]:9000", "tcp", "[::1]:9000", false},
		{"unix socket", "unix:/run/ferry.sock", "unix", "/run/ferry.sock", false},
		{"empty", "", "", "", true},
		{"junk", "a b", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			network, addr, err := parseTo(tt.to)
			if tt.usage {
				if !errors.Is(err, errUsage) {
					t.Fatalf("parseTo(%q) error %v, want a usage error", tt.to, err)
				}
				return
			}
			if err != nil || network != tt.network || addr != tt.addr {
				t.Fatalf("parseTo(%q) = %q, %q, %v; want %q, %q", tt.to, network, addr, err, tt.network, tt.addr)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	refused := func(c transfer.Code) error {
		return fmt.Errorf("sending: %w", &transfer.RemoteError{Code: c, Message: "x"})
	}
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},
		{"usage", fmt.Errorf("%w: bad flag", errUsage), exitUsage},
		{"network", io.ErrUnexpectedEOF, exitFailed},
		{"exists", refused(transfer.CodeExists), exitRefused},
		{"bad name", refused(transfer.CodeBadName), exitRefused},
		{"too large", refused(transfer.CodeTooLarge), exitRefused},
		{"no space", refused(transfer.CodeNoSpace), exitRefused},
		{"unauthorized", refused(transfer.CodeUnauthorized), exitRefused},
		{"version refused by the daemon", refused(transfer.CodeVersion), exitRefused},
		{"version found by the sender", fmt.Errorf("handshake: %w", transfer.ErrVersion), exitRefused},
		{"name too long for the frame", fmt.Errorf("%w: long", transfer.ErrBadName), exitRefused},
		{"busy after retries", refused(transfer.CodeBusy), exitFailed},
		{"daemon I/O after retries", refused(transfer.CodeInternal), exitFailed},
		{"integrity refusal", refused(transfer.CodeIntegrity), exitIntegrity},
		{"integrity found by the sender", fmt.Errorf("%w: hash", transfer.ErrIntegrity), exitIntegrity},
		{"source changed", transfer.ErrSourceChanged, exitFailed},
		{"source unreadable", fmt.Errorf("%w: permission denied", transfer.ErrSourceUnreadable), exitFailed},
		{"source keeps changing", transfer.ErrKeepsChanging, exitFailed},
		{"not a ferry daemon", fmt.Errorf("handshake: %w", transfer.ErrNotFerry), exitFailed},
		{"invalid configuration", fmt.Errorf("%w: chunk size", transfer.ErrInvalidConfig), exitUsage},
		{"interrupted", fmt.Errorf("interrupted: %w", context.Canceled), exitInterrupt},
		{"identity mismatch", fmt.Errorf("connecting: %w", &transfer.IdentityError{Addr: "h:1", Want: "a", Got: "b", Source: "pinned"}), exitIdentity},
		{"identity raced in known hosts, wrapped as configuration", fmt.Errorf("%w: %w", transfer.ErrInvalidConfig, &transfer.IdentityError{Source: "known hosts"}), exitIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exitCode(tt.err); got != tt.want {
				t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}
