package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitValue returns the value of key in the systemd unit text, or "".
func unitValue(unit, key string) string {
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return v
		}
	}
	return ""
}

// TestSystemdUnitCommandLine runs the command line of
// deploy/systemd/karuta.service (with a config of the test's) and stops it
// as systemd would, and checks that systemd waits longer for the stop than
// the node's own shutdown timeout. systemd-analyze checks the rest of the
// unit in the deploy stage.
func TestSystemdUnitCommandLine(t *testing.T) {
	data, err := os.ReadFile("../../deploy/systemd/karuta.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	args := strings.Fields(unitValue(unit, "ExecStart"))
	if len(args) < 2 || args[0] != "/usr/local/bin/karuta" || args[1] != "serve" {
		t.Fatalf("ExecStart = %q; want /usr/local/bin/karuta serve ...", args)
	}
	cfg := filepath.Join(t.TempDir(), "karuta.yaml")
	writeFile(t, cfg, "log: {level: error}\nfrontends:\n  http: {addr: '127.0.0.1:0'}\n  udp: {addr: '127.0.0.1:0'}\nmetrics: {addr: '127.0.0.1:0'}\n")
	shutdown := 30 * time.Second
	for i, a := range args {
		if a == "/etc/karuta/karuta.yaml" {
			args[i] = cfg
		}
		if a == "--shutdown-timeout" && i+1 < len(args) {
			if shutdown, err = time.ParseDuration(args[i+1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	sigs := make(chan os.Signal, 2)
	sigs <- syscall.SIGHUP // ExecReload
	sigs <- syscall.SIGTERM
	var stderr bytes.Buffer
	if code := run(args[1:], &bytes.Buffer{}, &stderr, sigs); code != exitOK {
		t.Errorf("karuta %s exited %d: %s", strings.Join(args[1:], " "), code, stderr.String())
	}
	stop, err := time.ParseDuration(unitValue(unit, "TimeoutStopSec"))
	if err != nil || stop <= shutdown {
		t.Errorf("TimeoutStopSec=%s (%v); want it longer than the shutdown timeout %s, or systemd kills a node handing its swarms over", unitValue(unit, "TimeoutStopSec"), err, shutdown)
	}
	if got := unitValue(unit, "ExecReload"); got != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload=%s; want SIGHUP, which reloads the config", got)
	}
}
