//go:build unix

package udp

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// holdPortEnv makes the test binary, run by TestSecondProcessCannotSharePort,
// a process that serves the UDP frontend on the address it names, prints
// the bound address and holds it until its standard input closes.
const holdPortEnv = "KARUTA_TEST_HOLD_UDP"

func TestMain(m *testing.M) {
	if addr := os.Getenv(holdPortEnv); addr != "" {
		os.Exit(holdPort(addr))
	}
	os.Exit(m.Run())
}

func holdPort(addr string) int {
	s, err := New(Config{Addr: addr, Readers: 2, BatchSize: 8, ConnectRate: 1, ConnectBurst: 1, ConnectSources: 16}, &fakeTracker{}, nil, nil)
	if err == nil {
		err = s.Start()
	}
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println(s.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// startHolder runs a second process that holds a UDP frontend on addr
// and returns the address it bound.
func startHolder(t *testing.T, addr string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$") //nolint:gosec // G702: the test binary runs itself
	cmd.Env = append(os.Environ(), holdPortEnv+"="+addr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.HasPrefix(line, "error ") {
		t.Fatalf("holder process: %q, %v", line, err)
	}
	return strings.TrimSpace(line)
}

// TestSecondProcessCannotSharePort starts the UDP frontend in another
// process, then on the same address here: the kernel would let this
// process join the other's SO_REUSEPORT group and split the datagrams, so
// Start must fail instead, naming the address. This process's own several
// readers on one port still start (TestServerReusePort), and the address
// is free again once the other process has gone.
func TestSecondProcessCannotSharePort(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "[::1]"} {
		t.Run(host, func(t *testing.T) {
			if host == "[::1]" {
				if c, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
					t.Skip("no IPv6 loopback on this machine") // CI has it; some containers do not
				} else {
					c.Close()
				}
			}
			held := startHolder(t, host+":0")
			for _, addr := range []string{held, "0.0.0.0:" + portOf(t, held), "[::]:" + portOf(t, held)} {
				s, err := New(Config{Addr: addr, Readers: 2, BatchSize: 8}, &fakeTracker{}, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				err = s.Start()
				if err == nil {
					_ = s.Shutdown(t.Context())
					t.Fatalf("Start on %s succeeded while another process holds %s", addr, held)
				}
				if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "another socket already holds the port") {
					t.Errorf("Start on %s: %v; want an error naming the address and saying it is taken", addr, err)
				}
			}
		})
	}
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}
