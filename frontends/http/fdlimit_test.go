package http

import (
	"strings"
	"testing"
)

func TestFileLimitProblem(t *testing.T) {
	tests := []struct {
		maxConns int
		limit    uint64
		want     string // substring; empty for no problem
	}{
		{10_000, 1 << 20, ""},
		{10_000, 11_024, ""},
		{10_000, 11_023, "max_connections (10000) leaves fewer than 1024 of the process's 11023 file descriptors"},
		{20_000, 20_000, "lower it or raise the limit"},
	}
	for _, tt := range tests {
		got := fileLimitProblem(tt.maxConns, tt.limit)
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("fileLimitProblem(%d, %d) = %q, want %q", tt.maxConns, tt.limit, got, tt.want)
		}
	}
}
