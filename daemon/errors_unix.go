package daemon

import "syscall"

// errTooManyFiles is the accept error to back off on rather than die of.
var errTooManyFiles = syscall.EMFILE
