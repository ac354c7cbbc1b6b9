//go:build linux

package loadgen

import (
	"os"
	"testing"
)

func TestReadProcSelf(t *testing.T) {
	s, err := readProc("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.peakRSS == 0 || s.schedCPU+s.statCPU == 0 {
		t.Errorf("own process: %+v", s)
	}
}
