// Package b3x is a 16-lane AVX-512 BLAKE3 kernel for transfer's chunk
// hashes, which hash every byte once per side as BLAKE3 subtree chaining
// values.
//
// It exists because lukechampine.com/blake3/guts, which transfer uses for
// its tree, loads the message words of its 16 lanes with VPGATHERDD, 16
// gathers per 16 blocks, and gathers are slow on AMD Zen: on an AMD EPYC
// with AVX-512 guts' kernel hashes about 4.6 GB/s per core, where the
// official BLAKE3 assembly hashes about 9.5 GB/s. This kernel loads each
// lane's 64-byte block with one plain load and transposes the 16 blocks in
// registers (VPUNPCK{L,H}DQ, VPUNPCK{L,H}QDQ, VSHUFI32X4), the way the
// official blake3_hash16_avx512 does, and reaches about 10.8 GB/s on one
// core on the same machine (BenchmarkPiece; transfer's BenchmarkHashPasses
// has the figures with the tree around it).
//
// The algorithm is the BLAKE3 specification's compression function
// (https://github.com/BLAKE3-team/BLAKE3-specs), seven rounds of G over a
// message schedule permuted between rounds, and the design is the
// official implementation's hash_many: one call compresses 16 inputs, each
// a number of whole 64-byte blocks at a fixed stride, from one key, with a
// counter that grows by one per lane for chunks and stays for parents,
// CHUNK_START on the first block and CHUNK_END on the last. SubtreeNode
// uses it for the 16 BLAKE3 chunks of each 16 KiB piece and for the parent
// layers above up to 16 pieces, 16 parents per call. The assembly is
// written by hand in kernel_amd64.s with #define macros; no generator.
//
// Available says whether the CPU runs the kernel; without it (no AVX-512,
// another architecture, or the purego build tag), callers use guts.
package b3x
