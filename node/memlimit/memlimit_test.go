package memlimit

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

const physicalBytes = 24683772 * 1024 // MemTotal in every fixture

// TestDetect reads the fixtures under testdata, each a process's view of
// /proc and /sys in one cgroup layout.
func TestDetect(t *testing.T) {
	tests := []struct {
		dir        string
		goMemLimit int64
		want       Limit
	}{
		{"v1-nested", math.MaxInt64, Limit{Bytes: 512 << 20, Cgroup: 512 << 20,
			Source: "cgroup v1 /sys/fs/cgroup/memory/karuta/memory.limit_in_bytes"}},
		{"v1-comounted", math.MaxInt64, Limit{Bytes: 1 << 30, Cgroup: 1 << 30,
			Source: "cgroup v1 /sys/fs/cgroup/cpu,cpuacct,memory/docker/abc/memory.limit_in_bytes"}},
		{"v2", math.MaxInt64, Limit{Bytes: 1536 << 20, Cgroup: 1536 << 20,
			Source: "cgroup v2 /sys/fs/cgroup/system.slice/karuta.service/memory.high"}},
		{"v2-namespace", math.MaxInt64, Limit{Bytes: 512 << 20, Cgroup: 512 << 20,
			Source: "cgroup v2 /sys/fs/cgroup/memory.max"}},
		{"v2-escaped", math.MaxInt64, Limit{Bytes: 768 << 20, Cgroup: 768 << 20,
			Source: "cgroup v2 /sys/fs/my cgroup/pod1/memory.max"}},
		{"unlimited", math.MaxInt64, Limit{Bytes: physicalBytes, Source: "physical memory"}},
		{"nocgroup", math.MaxInt64, Limit{Bytes: physicalBytes, Source: "physical memory"}},
		// GOMEMLIMIT wins when lower, and the cgroup is still reported.
		{"v1-nested", 256 << 20, Limit{Bytes: 256 << 20, Cgroup: 512 << 20, Source: "GOMEMLIMIT"}},
		{"unlimited", 1 << 30, Limit{Bytes: 1 << 30, Source: "GOMEMLIMIT"}},
		{"v2-namespace", 1 << 30, Limit{Bytes: 512 << 20, Cgroup: 512 << 20, Source: "cgroup v2 /sys/fs/cgroup/memory.max"}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			got, err := Detect(Host{FS: os.DirFS(filepath.Join("testdata", tt.dir)), GoMemLimit: tt.goMemLimit})
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Detect = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDetectNothing(t *testing.T) {
	if got, err := Detect(Host{FS: os.DirFS(t.TempDir()), GoMemLimit: math.MaxInt64}); err == nil {
		t.Errorf("Detect on an empty file system = %+v, want an error", got)
	}
}

// TestDetectThisProcess reads the real /proc and /sys: whatever the
// machine, the limit is positive and no more than its memory.
func TestDetectThisProcess(t *testing.T) {
	got, err := Detect(ThisProcess())
	if err != nil {
		t.Fatal(err)
	}
	phys, err := physical(os.DirFS("/"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Bytes <= 0 || got.Bytes > phys || got.Source == "" {
		t.Errorf("Detect = %+v with %d bytes of physical memory", got, phys)
	}
	t.Logf("this process may use %d MiB (%s)", got.Bytes>>20, got.Source)
}

func TestParseLimit(t *testing.T) {
	for in, want := range map[string]int64{
		"536870912\n":           536870912,
		"max\n":                 0,
		"9223372036854771712\n": 0, // v1's "no limit"
		"0\n":                   0,
		"-1\n":                  0,
		"garbage":               0,
		"":                      0,
	} {
		got, ok := parseLimit([]byte(in))
		if got != want || ok != (want > 0) {
			t.Errorf("parseLimit(%q) = %d, %v; want %d", in, got, ok, want)
		}
	}
}

func TestRuntimeLimit(t *testing.T) {
	if got := RuntimeLimit(512 << 20); got != 483183819 {
		t.Errorf("RuntimeLimit(512 MiB) = %d, want nine tenths", got)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/fs/cgroup`:         "/sys/fs/cgroup",
		`/mnt/my\040cgroup`:      "/mnt/my cgroup",
		`/a\134b`:                `/a\b`,
		`/trailing\04`:           `/trailing\04`,
		`/tab\011and\012newline`: "/tab\tand\nnewline",
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
