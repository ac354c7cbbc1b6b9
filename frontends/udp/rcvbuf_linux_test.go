package udp

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// rmemMax is the most SO_RCVBUF may ask for without CAP_NET_ADMIN.
func rmemMax(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The sockets get the configured receive buffer, so a burst that arrives
// while the readers are busy is queued rather than dropped; without the
// privilege to pass rmem_max they get rmem_max.
func TestServerReceiveBuffer(t *testing.T) {
	const want = 3 << 20
	s := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 2, ReceiveBuffer: want}, &fakeTracker{}, nil)
	expect := want
	if os.Geteuid() != 0 {
		expect = min(want, rmemMax(t))
	}
	for i, c := range s.conns {
		got, err := setReceiveBuffer(c, 0) // 0: only read what was granted
		if err != nil {
			t.Fatal(err)
		}
		if got < expect {
			t.Errorf("socket %d: receive buffer %d bytes, want at least %d", i, got, expect)
		}
	}

	// 0 keeps the kernel's default, which is below what was asked above.
	d := startServer(t, Config{Addr: "127.0.0.1:0", Readers: 1}, &fakeTracker{}, nil)
	got, err := setReceiveBuffer(d.conns[0], 0)
	if err != nil {
		t.Fatal(err)
	}
	if got >= want {
		t.Errorf("receive_buffer 0: %d bytes, want the kernel's default, below %d", got, want)
	}
}
