//go:build amd64 && !purego

package b3x

import "golang.org/x/sys/cpu"

// Available reports whether this CPU and OS run the AVX-512 kernel: the
// AVX-512 foundation and vector-length extensions, with the OS saving the
// ZMM registers (which golang.org/x/sys/cpu checks). Without it, callers
// use lukechampine.com/blake3/guts, which this package only complements.
var Available = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL

// hashMany16 compresses 16 inputs at once, lane i starting at in+i·stride
// and running blocks (at least 1) whole 64-byte blocks: the CVs start as
// key, lane i's counter is counter+i if inc is 1 and counter if inc is 0
// (the high word carrying per lane), each block gets flags, the first also
// flagsStart and the last also flagsEnd. It writes lane i's chaining value
// to out[i]. Requires Available.
//
//go:noescape
func hashMany16(out *[Lanes][8]uint32, in *byte, stride uintptr, blocks uintptr, key *[8]uint32, counter uint64, flags uint32, flagsStart uint32, flagsEnd uint32, inc uint32)
