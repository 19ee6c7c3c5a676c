package transfer

import (
	"errors"
	"fmt"
)

// Code is a refusal code carried on the wire in a Refuse frame. Codes are
// stable across protocol versions; new codes may be added, and a peer that
// receives an unknown code treats it as CodeInternal.
type Code uint16

// Refusal codes. docs/PROTOCOL.md lists them with their meaning.
const (
	CodeVersion      Code = 1  // unsupported protocol version
	CodeProtocol     Code = 2  // malformed or unexpected frame
	CodeBadName      Code = 3  // destination name refused
	CodeExists       Code = 4  // a committed file already has that name
	CodeTooLarge     Code = 5  // declared size above the daemon's limit
	CodeNoSpace      Code = 6  // not enough disk space on the daemon
	CodeBusy         Code = 7  // another session holds this transfer
	CodeIntegrity    Code = 8  // chunk or whole-file hash did not match
	CodeInternal     Code = 9  // I/O or other failure on the daemon
	CodeShuttingDown Code = 10 // the daemon is draining
	CodeUnauthorized Code = 11 // credential missing or refused
	CodeTimeout      Code = 12 // the peer was idle too long
)

// Sentinel errors that callers branch on. A *RemoteError matches the sentinel
// of its code with errors.Is.
var (
	ErrVersion      = errors.New("unsupported protocol version")
	ErrProtocol     = errors.New("protocol violation")
	ErrBadName      = errors.New("bad file name")
	ErrExists       = errors.New("file exists")
	ErrTooLarge     = errors.New("file too large")
	ErrNoSpace      = errors.New("no space left on daemon")
	ErrBusy         = errors.New("transfer busy in another session")
	ErrIntegrity    = errors.New("integrity check failed")
	ErrInternal     = errors.New("daemon internal error")
	ErrShuttingDown = errors.New("daemon shutting down")
	ErrUnauthorized = errors.New("unauthorized")
	ErrTimeout      = errors.New("idle timeout")

	// ErrSourceChanged is returned by Send when the source file changed
	// while it was being sent (size or content no longer match what was
	// offered). Retrying starts the transfer over.
	ErrSourceChanged = errors.New("source file changed during transfer")

	// ErrSourceUnreadable is returned by Sender.Send when the source file
	// cannot be opened or is not a regular file. It is permanent: the
	// file fails, and retrying the same command cannot help until the
	// file's permissions or type change.
	ErrSourceUnreadable = errors.New("source file cannot be read")

	// ErrKeepsChanging is returned by Sender.Send when the source changed
	// more than Sender.MaxRestarts times while it was being sent, so every
	// attempt had to start over. It is permanent for this run.
	ErrKeepsChanging = errors.New("source keeps changing while it is sent")

	// ErrNotFerry is returned by Handshake when the peer answers with
	// bytes that are not a ferry Hello or refusal: it is not a ferry
	// daemon. It is permanent.
	ErrNotFerry = errors.New("peer does not speak the ferry protocol")

	// ErrInvalidConfig is returned when a Sender or ClientOptions field is
	// out of range (a chunk size that is not a power of two from
	// MinChunkSize to MaxChunkSize, a negative retry count, …). It is permanent: it is a usage error.
	ErrInvalidConfig = errors.New("invalid sender configuration")
)

// codePrecedence lists every code with its sentinel, in the order CodeOf
// tries them: permanent refusals (version, unauthorized, bad name, exists,
// too large, no space) before passing ones (protocol, integrity, timeout,
// busy, shutting down), and CodeInternal, the catch-all, last. An error
// that wraps several sentinels (a storage failure wrapped as ErrInternal
// around an ErrNoSpace, say) thus gets its most specific code, and a
// sender is never told to retry what a permanent cause dooms.
var codePrecedence = []struct {
	code Code
	err  error
}{
	{CodeVersion, ErrVersion},
	{CodeUnauthorized, ErrUnauthorized},
	{CodeBadName, ErrBadName},
	{CodeExists, ErrExists},
	{CodeTooLarge, ErrTooLarge},
	{CodeNoSpace, ErrNoSpace},
	{CodeProtocol, ErrProtocol},
	{CodeIntegrity, ErrIntegrity},
	{CodeTimeout, ErrTimeout},
	{CodeBusy, ErrBusy},
	{CodeShuttingDown, ErrShuttingDown},
	{CodeInternal, ErrInternal},
}

// codeToError maps each code to its sentinel; with codePrecedence it keeps
// both directions in step (syncthing's codeToError/errorToCode pattern).
var codeToError = func() map[Code]error {
	m := make(map[Code]error, len(codePrecedence))
	for _, p := range codePrecedence {
		m[p.code] = p.err
	}
	return m
}()

// CodeOf returns the refusal code for err: the code of the first
// *RemoteError in err's chain, else the code of the first sentinel in
// codePrecedence's order that err wraps, else CodeInternal. The result
// does not depend on the order in which err wraps its causes.
func CodeOf(err error) Code {
	var re *RemoteError
	if errors.As(err, &re) {
		return re.Code
	}
	for _, p := range codePrecedence {
		if errors.Is(err, p.err) {
			return p.code
		}
	}
	return CodeInternal
}

// RemoteError is a refusal received from (or sent to) the peer.
type RemoteError struct {
	// ID is the transfer refused, or 0 for the whole session.
	ID      uint32
	Code    Code
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("refused: %v", e.sentinel())
	}
	return fmt.Sprintf("refused: %s", e.Message)
}

// Is reports whether target is the sentinel for e's code.
func (e *RemoteError) Is(target error) bool {
	return e.sentinel() == target
}

func (e *RemoteError) sentinel() error {
	if s, ok := codeToError[e.Code]; ok {
		return s
	}
	return ErrInternal
}

// permanent are the locally found conditions that no new session fixes.
var permanent = []error{
	ErrVersion, ErrBadName, ErrSourceUnreadable, ErrKeepsChanging, ErrNotFerry, ErrInvalidConfig, ErrIdentity,
}

// Retryable reports whether a new session may succeed where err failed:
// network and I/O errors, integrity failures (the chunk is sent again), and
// refusals that describe a passing state of the daemon (and unknown codes,
// which count as CodeInternal). Refusals about the request itself (bad
// name, exists, too large, no space, unauthorized), a version mismatch
// found by either side, a peer that is not ferry (ErrNotFerry), an
// unreadable source (ErrSourceUnreadable), a source that keeps changing
// (ErrKeepsChanging), an invalid configuration (ErrInvalidConfig) and a
// daemon whose identity did not match (ErrIdentity) are permanent.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	for _, p := range permanent {
		if errors.Is(err, p) {
			return false
		}
	}
	var re *RemoteError
	if errors.As(err, &re) {
		switch re.Code {
		case CodeBusy, CodeInternal, CodeShuttingDown, CodeTimeout, CodeIntegrity, CodeProtocol:
			return true
		}
		_, known := codeToError[re.Code]
		return !known // an unknown code counts as CodeInternal
	}
	return true
}
