//go:build amd64 && !purego

#include "textflag.h"

// hashMany16 compresses 16 inputs at once, one per 32-bit lane of the
// AVX-512 registers: the 16-way design of the official BLAKE3 hash_many,
// with message blocks loaded by plain 64-byte loads and transposed in
// registers instead of gathered (see doc.go).
//
// Registers while compressing:
//   Z0-Z7    CV words 0-7 of the 16 lanes (state v0-v7)
//   Z8-Z15   state v8-v15, set afresh for each block
//   Z16-Z31  the block's 16 message words, placed by the transpose (M0-M15)
// While a block is loaded and transposed Z8-Z31 are scratch.
//
// General registers:
//   SI, R8, R9, R10  lanes 0, 4, 8, 12 of the next block
//   BX, DX           stride and 3*stride: lane 4g+k is (base)(BX*k), lane 4g+3 is (base)(DX*1)
//   CX               blocks left
//   R11, R12, R13    flags; flags for the first block (cleared after it); flags for the last
//   AX               this block's flags
//   DI               out
//
// Frame: 0(SP) counter low words of the 16 lanes, 64(SP) high words.

DATA iv<>+0(SB)/4, $0x6a09e667
DATA iv<>+4(SB)/4, $0xbb67ae85
DATA iv<>+8(SB)/4, $0x3c6ef372
DATA iv<>+12(SB)/4, $0xa54ff53a
GLOBL iv<>(SB), RODATA|NOPTR, $16

DATA lanes<>+0(SB)/4, $0
DATA lanes<>+4(SB)/4, $1
DATA lanes<>+8(SB)/4, $2
DATA lanes<>+12(SB)/4, $3
DATA lanes<>+16(SB)/4, $4
DATA lanes<>+20(SB)/4, $5
DATA lanes<>+24(SB)/4, $6
DATA lanes<>+28(SB)/4, $7
DATA lanes<>+32(SB)/4, $8
DATA lanes<>+36(SB)/4, $9
DATA lanes<>+40(SB)/4, $10
DATA lanes<>+44(SB)/4, $11
DATA lanes<>+48(SB)/4, $12
DATA lanes<>+52(SB)/4, $13
DATA lanes<>+56(SB)/4, $14
DATA lanes<>+60(SB)/4, $15
GLOBL lanes<>(SB), RODATA|NOPTR, $64

DATA blocklen<>+0(SB)/4, $64
GLOBL blocklen<>(SB), RODATA|NOPTR, $4

// Message words after the transpose.
#define M0 Z28
#define M1 Z16
#define M2 Z18
#define M3 Z19
#define M4 Z29
#define M5 Z20
#define M6 Z22
#define M7 Z23
#define M8 Z30
#define M9 Z17
#define M10 Z24
#define M11 Z25
#define M12 Z31
#define M13 Z21
#define M14 Z26
#define M15 Z27

// LOADGROUP loads the blocks of lanes 4g..4g+3 (base is lane 4g) and
// interleaves them so that 128-bit lane k of O_j holds word 4k+j of the
// four blocks, in lane order. Z24 and Z25 are scratch.
#define LOADGROUP(base, O0, O1, O2, O3) \
	VMOVDQU32   (base), Z24;       \
	VMOVDQU32   (base)(BX*1), O0;  \
	VMOVDQU32   (base)(BX*2), Z25; \
	VMOVDQU32   (base)(DX*1), O1;  \
	VPUNPCKLDQ  O0, Z24, O2;       \
	VPUNPCKHDQ  O0, Z24, Z24;      \
	VPUNPCKLDQ  O1, Z25, O3;       \
	VPUNPCKHDQ  O1, Z25, Z25;      \
	VPUNPCKLQDQ O3, O2, O0;        \
	VPUNPCKHQDQ O3, O2, O1;        \
	VPUNPCKLQDQ Z25, Z24, O2;      \
	VPUNPCKHQDQ Z25, Z24, O3

// TRANS4 gathers 128-bit lanes: given X_g = LOADGROUP's O_j of group g, it
// leaves word j of the 16 blocks in O0, word 4+j in O1, 8+j in O2 and
// 12+j in O3. A-D are scratch; O2 may be A and O3 may be B or C.
#define TRANS4(X0, X1, X2, X3, A, B, C, D, O0, O1, O2, O3) \
	VSHUFI32X4 $0x44, X1, X0, A; \
	VSHUFI32X4 $0xee, X1, X0, B; \
	VSHUFI32X4 $0x44, X3, X2, C; \
	VSHUFI32X4 $0xee, X3, X2, D; \
	VSHUFI32X4 $0x88, C, A, O0; \
	VSHUFI32X4 $0xdd, C, A, O1; \
	VSHUFI32X4 $0x88, D, B, O2; \
	VSHUFI32X4 $0xdd, D, B, O3

// G4 is one half of the BLAKE3 G function, mixing message words x into
// four columns (or diagonals) a, b, c, d at once, rotating d by r1 and b by r2.
#define G4(a0, b0, c0, d0, a1, b1, c1, d1, a2, b2, c2, d2, a3, b3, c3, d3, x0, x1, x2, x3, r1, r2) \
	VPADDD x0, a0, a0; \
	VPADDD x1, a1, a1; \
	VPADDD x2, a2, a2; \
	VPADDD x3, a3, a3; \
	VPADDD b0, a0, a0; \
	VPADDD b1, a1, a1; \
	VPADDD b2, a2, a2; \
	VPADDD b3, a3, a3; \
	VPXORD a0, d0, d0; \
	VPXORD a1, d1, d1; \
	VPXORD a2, d2, d2; \
	VPXORD a3, d3, d3; \
	VPRORD $r1, d0, d0; \
	VPRORD $r1, d1, d1; \
	VPRORD $r1, d2, d2; \
	VPRORD $r1, d3, d3; \
	VPADDD d0, c0, c0; \
	VPADDD d1, c1, c1; \
	VPADDD d2, c2, c2; \
	VPADDD d3, c3, c3; \
	VPXORD c0, b0, b0; \
	VPXORD c1, b1, b1; \
	VPXORD c2, b2, b2; \
	VPXORD c3, b3, b3; \
	VPRORD $r2, b0, b0; \
	VPRORD $r2, b1, b1; \
	VPRORD $r2, b2, b2; \
	VPRORD $r2, b3, b3

// ROUND is one BLAKE3 round with the message words in schedule order.
#define ROUND(m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15) \
	G4(Z0, Z4, Z8, Z12, Z1, Z5, Z9, Z13, Z2, Z6, Z10, Z14, Z3, Z7, Z11, Z15, m0, m2, m4, m6, 16, 12); \
	G4(Z0, Z4, Z8, Z12, Z1, Z5, Z9, Z13, Z2, Z6, Z10, Z14, Z3, Z7, Z11, Z15, m1, m3, m5, m7, 8, 7);  \
	G4(Z0, Z5, Z10, Z15, Z1, Z6, Z11, Z12, Z2, Z7, Z8, Z13, Z3, Z4, Z9, Z14, m8, m10, m12, m14, 16, 12); \
	G4(Z0, Z5, Z10, Z15, Z1, Z6, Z11, Z12, Z2, Z7, Z8, Z13, Z3, Z4, Z9, Z14, m9, m11, m13, m15, 8, 7)

// func hashMany16(out *[16][8]uint32, in *byte, stride uintptr, blocks uintptr, key *[8]uint32, counter uint64, flags uint32, flagsStart uint32, flagsEnd uint32, inc uint32)
TEXT ·hashMany16(SB), NOSPLIT, $128-64
	MOVQ in+8(FP), SI
	MOVQ stride+16(FP), BX
	MOVQ blocks+24(FP), CX
	MOVQ key+32(FP), AX
	MOVL flags+48(FP), R11
	MOVL flagsStart+52(FP), R12
	MOVL flagsEnd+56(FP), R13

	LEAQ (BX)(BX*2), DX
	LEAQ (SI)(BX*4), R8
	LEAQ (R8)(BX*4), R9
	LEAQ (R9)(BX*4), R10

	// CV: the key in every lane.
	VPBROADCASTD 0(AX), Z0
	VPBROADCASTD 4(AX), Z1
	VPBROADCASTD 8(AX), Z2
	VPBROADCASTD 12(AX), Z3
	VPBROADCASTD 16(AX), Z4
	VPBROADCASTD 20(AX), Z5
	VPBROADCASTD 24(AX), Z6
	VPBROADCASTD 28(AX), Z7

	// Counters: counter+lane if inc is set, with the carry into the high
	// word per lane; counter in every lane otherwise.
	MOVQ counter+40(FP), AX
	VPBROADCASTD AX, Z8
	SHRQ $32, AX
	VPBROADCASTD AX, Z9
	MOVL inc+60(FP), AX
	TESTL AX, AX
	JZ   countersDone
	VPADDD lanes<>(SB), Z8, Z10
	VPCMPUD $1, Z8, Z10, K1
	VPBROADCASTD lanes<>+4(SB), Z11
	VPADDD Z11, Z9, K1, Z9
	VMOVDQA32 Z10, Z8

countersDone:
	VMOVDQU32 Z8, 0(SP)
	VMOVDQU32 Z9, 64(SP)

loop:
	MOVL  R11, AX
	ORL   R12, AX
	XORL  R12, R12
	CMPQ  CX, $1
	JNE   notLast
	ORL   R13, AX

notLast:
	LOADGROUP(SI, Z8, Z9, Z10, Z11)
	LOADGROUP(R8, Z12, Z13, Z14, Z15)
	LOADGROUP(R9, Z16, Z17, Z18, Z19)
	LOADGROUP(R10, Z20, Z21, Z22, Z23)
	TRANS4(Z8, Z12, Z16, Z20, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31)
	TRANS4(Z9, Z13, Z17, Z21, Z24, Z25, Z26, Z27, Z16, Z20, Z17, Z21)
	TRANS4(Z10, Z14, Z18, Z22, Z24, Z25, Z26, Z27, Z18, Z22, Z24, Z26)
	TRANS4(Z11, Z15, Z19, Z23, Z25, Z27, Z8, Z9, Z19, Z23, Z25, Z27)

	VPBROADCASTD iv<>+0(SB), Z8
	VPBROADCASTD iv<>+4(SB), Z9
	VPBROADCASTD iv<>+8(SB), Z10
	VPBROADCASTD iv<>+12(SB), Z11
	VMOVDQU32    0(SP), Z12
	VMOVDQU32    64(SP), Z13
	VPBROADCASTD blocklen<>(SB), Z14
	VPBROADCASTD AX, Z15

	ROUND(M0, M1, M2, M3, M4, M5, M6, M7, M8, M9, M10, M11, M12, M13, M14, M15)
	ROUND(M2, M6, M3, M10, M7, M0, M4, M13, M1, M11, M12, M5, M9, M14, M15, M8)
	ROUND(M3, M4, M10, M12, M13, M2, M7, M14, M6, M5, M9, M0, M11, M15, M8, M1)
	ROUND(M10, M7, M12, M9, M14, M3, M13, M15, M4, M0, M11, M2, M5, M8, M1, M6)
	ROUND(M12, M13, M9, M11, M15, M10, M14, M8, M7, M2, M5, M3, M0, M1, M6, M4)
	ROUND(M9, M14, M11, M5, M8, M12, M15, M1, M13, M3, M0, M10, M2, M6, M4, M7)
	ROUND(M11, M15, M5, M0, M1, M9, M8, M6, M14, M10, M2, M12, M3, M4, M7, M13)

	VPXORD Z8, Z0, Z0
	VPXORD Z9, Z1, Z1
	VPXORD Z10, Z2, Z2
	VPXORD Z11, Z3, Z3
	VPXORD Z12, Z4, Z4
	VPXORD Z13, Z5, Z5
	VPXORD Z14, Z6, Z6
	VPXORD Z15, Z7, Z7

	ADDQ $64, SI
	ADDQ $64, R8
	ADDQ $64, R9
	ADDQ $64, R10
	DECQ CX
	JNZ  loop

	// Transpose the CVs back: lane i's eight words go to out[i].
	MOVQ out+0(FP), DI
	VPUNPCKLDQ  Z1, Z0, Z8
	VPUNPCKHDQ  Z1, Z0, Z9
	VPUNPCKLDQ  Z3, Z2, Z10
	VPUNPCKHDQ  Z3, Z2, Z11
	VPUNPCKLDQ  Z5, Z4, Z12
	VPUNPCKHDQ  Z5, Z4, Z13
	VPUNPCKLDQ  Z7, Z6, Z14
	VPUNPCKHDQ  Z7, Z6, Z15
	// 128-bit lane k of Z16+j holds words 0-3 of lane 4k+j, of Z20+j words 4-7.
	VPUNPCKLQDQ Z10, Z8, Z16
	VPUNPCKHQDQ Z10, Z8, Z17
	VPUNPCKLQDQ Z11, Z9, Z18
	VPUNPCKHQDQ Z11, Z9, Z19
	VPUNPCKLQDQ Z14, Z12, Z20
	VPUNPCKHQDQ Z14, Z12, Z21
	VPUNPCKLQDQ Z15, Z13, Z22
	VPUNPCKHQDQ Z15, Z13, Z23
	// Z24+2j: lanes j, 8+j (words 0-3, 4-7 each); Z25+2j: lanes 4+j, 12+j.
	VSHUFI32X4 $0x88, Z20, Z16, Z24
	VSHUFI32X4 $0xdd, Z20, Z16, Z25
	VSHUFI32X4 $0x88, Z21, Z17, Z26
	VSHUFI32X4 $0xdd, Z21, Z17, Z27
	VSHUFI32X4 $0x88, Z22, Z18, Z28
	VSHUFI32X4 $0xdd, Z22, Z18, Z29
	VSHUFI32X4 $0x88, Z23, Z19, Z30
	VSHUFI32X4 $0xdd, Z23, Z19, Z31
	// Lanes j and j+1 side by side, for j = 0, 4, 8, 12 and 2, 6, 10, 14.
	VSHUFI32X4 $0x88, Z26, Z24, Z0
	VSHUFI32X4 $0x88, Z27, Z25, Z1
	VSHUFI32X4 $0xdd, Z26, Z24, Z2
	VSHUFI32X4 $0xdd, Z27, Z25, Z3
	VSHUFI32X4 $0x88, Z30, Z28, Z4
	VSHUFI32X4 $0x88, Z31, Z29, Z5
	VSHUFI32X4 $0xdd, Z30, Z28, Z6
	VSHUFI32X4 $0xdd, Z31, Z29, Z7
	VMOVDQU32 Z0, 0(DI)
	VMOVDQU32 Z1, 128(DI)
	VMOVDQU32 Z2, 256(DI)
	VMOVDQU32 Z3, 384(DI)
	VMOVDQU32 Z4, 64(DI)
	VMOVDQU32 Z5, 192(DI)
	VMOVDQU32 Z6, 320(DI)
	VMOVDQU32 Z7, 448(DI)
	VZEROUPPER
	RET
