package main

import (
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// serveEnv makes the test binary run `karuta serve --config $value` as
// its whole process, for tests that need a second real process.
const serveEnv = "KARUTA_TEST_SERVE_CONFIG"

func TestMain(m *testing.M) {
	if path := os.Getenv(serveEnv); path != "" {
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		os.Exit(run([]string{"serve", "--config", path}, os.Stdout, os.Stderr, sigs))
	}
	os.Exit(m.Run())
}

// TestSecondServeCannotShareUDPPort runs `karuta serve` in a process of its
// own, then a second `karuta serve` whose UDP frontend asks for the same
// address: the second must exit 1 naming the address, not start and split
// the first one's clients with it.
func TestSecondServeCannotShareUDPPort(t *testing.T) {
	udpAddr, metrics := freeUDPPort(t), freePort(t)
	dir := t.TempDir()
	first := filepath.Join(dir, "first.yaml")
	writeFile(t, first, "node: {name: first}\nlog: {level: warn}\nfrontends:\n  http: {addr: '127.0.0.1:0'}\n  udp: {addr: '"+udpAddr+"', readers: 2}\nmetrics: {addr: '"+metrics+"'}\n")
	cmd := exec.Command(os.Args[0], "-test.run=^$") //nolint:gosec // G702: the test binary runs itself
	cmd.Env = append(os.Environ(), serveEnv+"="+first)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	eventually.True(t, 20*time.Second, "the first karuta serve is ready", func() bool {
		select {
		case <-exited:
			t.Fatalf("the first karuta serve exited: %v", waitErr)
		default:
		}
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	second := filepath.Join(dir, "second.yaml")
	writeFile(t, second, "node: {name: second}\nlog: {level: error}\nfrontends:\n  http: {addr: '127.0.0.1:0'}\n  udp: {addr: '"+udpAddr+"'}\nmetrics: {addr: '127.0.0.1:0'}\n")
	code, _, errOut := runCLI(t, "serve", "--config", second)
	if code != exitFailure || !strings.Contains(errOut, udpAddr) || !strings.Contains(errOut, "already holds the port") {
		t.Errorf("second serve on %s: exit %d, stderr %q; want %d and an error naming the address", udpAddr, code, errOut, exitFailure)
	}
}
