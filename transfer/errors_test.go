package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// allCodes lists every refusal code with its sentinel and whether a sender
// may retry after it.
var allCodes = []struct {
	code      Code
	sentinel  error
	retryable bool
}{
	{CodeVersion, ErrVersion, false},
	{CodeProtocol, ErrProtocol, true},
	{CodeBadName, ErrBadName, false},
	{CodeExists, ErrExists, false},
	{CodeTooLarge, ErrTooLarge, false},
	{CodeNoSpace, ErrNoSpace, false},
	{CodeBusy, ErrBusy, true},
	{CodeIntegrity, ErrIntegrity, true},
	{CodeInternal, ErrInternal, true},
	{CodeShuttingDown, ErrShuttingDown, true},
	{CodeUnauthorized, ErrUnauthorized, false},
	{CodeTimeout, ErrTimeout, true},
}

func TestCodeValuesAreStable(t *testing.T) {
	// The values are on the wire: they never change.
	for i, c := range allCodes {
		if int(c.code) != i+1 {
			t.Errorf("code of %v is %d, want %d", c.sentinel, c.code, i+1)
		}
	}
	if len(codeToError) != len(allCodes) {
		t.Errorf("codeToError has %d codes, the table %d", len(codeToError), len(allCodes))
	}
}

func TestRemoteError(t *testing.T) {
	for _, c := range allCodes {
		t.Run(c.sentinel.Error(), func(t *testing.T) {
			re := &RemoteError{Code: c.code, Message: "because"}
			if !errors.Is(re, c.sentinel) {
				t.Errorf("RemoteError{%d} is not %v", c.code, c.sentinel)
			}
			for _, o := range allCodes {
				if o.code != c.code && errors.Is(re, o.sentinel) {
					t.Errorf("RemoteError{%d} is also %v", c.code, o.sentinel)
				}
			}
			wrapped := fmt.Errorf("sending f: %w", re)
			if !errors.Is(wrapped, c.sentinel) {
				t.Errorf("wrapped RemoteError{%d} is not %v", c.code, c.sentinel)
			}
			if got := CodeOf(wrapped); got != c.code {
				t.Errorf("CodeOf(wrapped RemoteError) = %d, want %d", got, c.code)
			}
			if got := CodeOf(fmt.Errorf("context: %w", c.sentinel)); got != c.code {
				t.Errorf("CodeOf(wrapped %v) = %d, want %d", c.sentinel, got, c.code)
			}
			if got := Retryable(re); got != c.retryable {
				t.Errorf("Retryable = %v, want %v", got, c.retryable)
			}
			if got := Retryable(wrapped); got != c.retryable {
				t.Errorf("Retryable(wrapped) = %v, want %v", got, c.retryable)
			}
			if got := re.Error(); got != "refused: because" {
				t.Errorf("Error() = %q", got)
			}
			if got := (&RemoteError{Code: c.code}).Error(); got != "refused: "+c.sentinel.Error() {
				t.Errorf("Error() without message = %q", got)
			}
		})
	}
}

func TestRemoteErrorUnknownCode(t *testing.T) {
	re := &RemoteError{Code: 4242}
	if !errors.Is(re, ErrInternal) {
		t.Error("an unknown code is not treated as ErrInternal")
	}
	if !Retryable(re) {
		t.Error("an unknown code is not retryable")
	}
	if CodeOf(re) != 4242 {
		t.Errorf("CodeOf = %d, want the code as received", CodeOf(re))
	}
	if !strings.Contains(re.Error(), ErrInternal.Error()) {
		t.Errorf("Error() = %q", re.Error())
	}
}

func TestCodeOfAndRetryable(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		code      Code
		retryable bool
	}{
		{"nil", nil, CodeInternal, false},
		{"plain error", errors.New("disk on fire"), CodeInternal, true},
		{"network error", io.ErrUnexpectedEOF, CodeInternal, true},
		{"cancelled", context.Canceled, CodeInternal, true},
		{"source changed", fmt.Errorf("x: %w", ErrSourceChanged), CodeInternal, true},
		{"local integrity failure", fmt.Errorf("x: %w", ErrIntegrity), CodeIntegrity, true},
		{"local protocol error", fmt.Errorf("x: %w", ErrProtocol), CodeProtocol, true},
		{"local version mismatch", fmt.Errorf("reading daemon hello: %w", ErrVersion), CodeVersion, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.err != nil {
				if got := CodeOf(tt.err); got != tt.code {
					t.Errorf("CodeOf = %d, want %d", got, tt.code)
				}
			}
			if got := Retryable(tt.err); got != tt.retryable {
				t.Errorf("Retryable = %v, want %v", got, tt.retryable)
			}
		})
	}
}

// TestCodeOfPrecedence guards against CodeOf picking a code by ranging
// over a map: an error wrapping two sentinels got either code at random.
// Every pair, wrapped in both orders and joined, must give the code that
// comes first in the documented precedence, every time.
func TestCodeOfPrecedence(t *testing.T) {
	if len(codePrecedence) != len(allCodes) {
		t.Fatalf("codePrecedence has %d codes, want %d", len(codePrecedence), len(allCodes))
	}
	t.Run("internal wrapping no space", func(t *testing.T) {
		// The case of issue 8: a storage failure classified twice.
		errs := []error{
			fmt.Errorf("%w: writing chunk: %w", ErrInternal, ErrNoSpace),
			fmt.Errorf("%w: writing chunk: %w", ErrNoSpace, ErrInternal),
			errors.Join(ErrInternal, ErrNoSpace),
		}
		for i := 0; i < 1000; i++ {
			for _, err := range errs {
				if got := CodeOf(err); got != CodeNoSpace {
					t.Fatalf("run %d: CodeOf(%v) = %d, want CodeNoSpace (%d)", i, err, got, CodeNoSpace)
				}
			}
		}
	})
	t.Run("every pair", func(t *testing.T) {
		for i, first := range codePrecedence {
			for _, later := range codePrecedence[i+1:] {
				errs := []error{
					fmt.Errorf("%w: %w", first.err, later.err),
					fmt.Errorf("%w: %w", later.err, first.err),
					errors.Join(later.err, first.err),
				}
				for run := 0; run < 50; run++ {
					for _, err := range errs {
						if got := CodeOf(err); got != first.code {
							t.Fatalf("CodeOf(%v) = %d, want %d", err, got, first.code)
						}
					}
				}
			}
		}
	})
	t.Run("remote error wins", func(t *testing.T) {
		err := fmt.Errorf("%w: %w", ErrVersion, &RemoteError{Code: CodeBusy})
		for i := 0; i < 100; i++ {
			if got := CodeOf(err); got != CodeBusy {
				t.Fatalf("CodeOf = %d, want the RemoteError's CodeBusy", got)
			}
		}
	})
}
