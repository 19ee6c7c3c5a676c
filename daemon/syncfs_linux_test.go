package daemon

import "testing"

func TestKernelAtLeast(t *testing.T) {
	for _, c := range []struct {
		release string
		want    bool
	}{
		{"5.8.0", true}, {"5.7.19-generic", false}, {"6.1.0-18-amd64", true}, {"4.19.0", false},
		{"5.10", true}, {"5.8-rc1", true}, {"10.0.0", true}, {"", false}, {"x.y", false},
	} {
		if got := kernelAtLeast(c.release, 5, 8); got != c.want {
			t.Errorf("kernelAtLeast(%q, 5, 8) = %v, want %v", c.release, got, c.want)
		}
	}
}

func TestParseDirty(t *testing.T) {
	n, ok := parseDirty([]byte("MemTotal:       24684092 kB\nDirty:             40376 kB\nWriteback:           100 kB\nWritebackTmp:   7 kB\n"))
	if !ok || n != (40376+100)<<10 {
		t.Errorf("parseDirty = %d, %v; want %d, true", n, ok, (40376+100)<<10)
	}
	if _, ok := parseDirty([]byte("MemTotal: 1 kB\nDirty: 5 kB\n")); ok {
		t.Error("parseDirty without Writeback reported ok")
	}
	if n, ok := dirtyBytes(); !ok || n < 0 {
		t.Errorf("dirtyBytes() = %d, %v on this machine", n, ok)
	}
}
