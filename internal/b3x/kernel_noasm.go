//go:build !amd64 || purego

package b3x

// Available reports whether this CPU and OS run the AVX-512 kernel; never
// in this build, which has no assembly.
var Available = false

// hashMany16 is hashManyGeneric where there is no assembly kernel.
func hashMany16(out *[Lanes][8]uint32, in *byte, stride uintptr, blocks uintptr, key *[8]uint32, counter uint64, flags uint32, flagsStart uint32, flagsEnd uint32, inc uint32) {
	hashManyGeneric(out, in, stride, blocks, key, counter, flags, flagsStart, flagsEnd, inc)
}
