package http

import "testing"

func TestFileLimitTight(t *testing.T) {
	tests := []struct {
		maxConns int
		limit    uint64
		want     bool
	}{
		{10_000, 1 << 20, false},
		{10_000, 11_024, false},
		{10_000, 11_023, true},
		{20_000, 20_000, true},
	}
	for _, tt := range tests {
		if got := fileLimitTight(tt.maxConns, tt.limit); got != tt.want {
			t.Errorf("fileLimitTight(%d, %d) = %v, want %v", tt.maxConns, tt.limit, got, tt.want)
		}
	}
}
