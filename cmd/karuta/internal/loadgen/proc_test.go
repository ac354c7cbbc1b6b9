package loadgen

import (
	"testing"
	"time"
)

func TestReadProcFixture(t *testing.T) {
	s, err := readProc("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	want := procSample{
		statCPU:  (1234 + 567) * 10 * time.Millisecond,
		schedCPU: 12000000000 + 6345678901,
		peakRSS:  51200 * 1024,
	}
	if s != want {
		t.Errorf("got %+v, want %+v", s, want)
	}
	if _, err := readProc("testdata/proc", 1); err == nil {
		t.Error("missing process: no error")
	}
}

func TestReadProcsSums(t *testing.T) {
	one, err := readProc("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	two, err := readProcs("testdata/proc", []int{4242, 4242})
	if err != nil {
		t.Fatal(err)
	}
	want := procSample{statCPU: 2 * one.statCPU, schedCPU: 2 * one.schedCPU, peakRSS: 2 * one.peakRSS}
	if two != want {
		t.Errorf("two processes: got %+v, want %+v", two, want)
	}
	if _, err := readProcs("testdata/proc", []int{4242, 1}); err == nil {
		t.Error("one missing process: no error")
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 abc 5"} {
		if _, err := parseStat([]byte(in)); err == nil {
			t.Errorf("parseStat(%q): no error", in)
		}
	}
	for _, in := range []string{"", "VmRSS: 5 kB\n", "VmHWM: 5 MB\n", "VmHWM: x kB\n"} {
		if _, err := parseStatusKB([]byte(in), "VmHWM"); err == nil {
			t.Errorf("parseStatusKB(%q): no error", in)
		}
	}
	if _, err := parseSchedstat([]byte(" \n")); err == nil {
		t.Error("parseSchedstat of blank: no error")
	}
}

func TestCPUBetween(t *testing.T) {
	a := procSample{statCPU: time.Second, schedCPU: 2 * time.Second}
	b := procSample{statCPU: 3 * time.Second, schedCPU: 2500 * time.Millisecond}
	if d, src := cpuBetween(a, b); d != 500*time.Millisecond || src != "schedstat" {
		t.Errorf("got %v from %s", d, src)
	}
	b.schedCPU = time.Second // a thread exited
	if d, src := cpuBetween(a, b); d != 2*time.Second || src != "stat" {
		t.Errorf("after a thread exit: got %v from %s", d, src)
	}
}
