package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// TestLogsCarryNoStackTraces logs an error, as a failed start or reload
// does, in both formats: the line says what failed, with no Go stack
// trace under it.
func TestLogsCarryNoStackTraces(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log")
			log, _, err := newLogger(LogConfig{Format: format, Level: "info"}, []string{path})
			if err != nil {
				t.Fatal(err)
			}
			log.Error("start failed", zap.Error(errors.New("node: listen metrics 127.0.0.1:6880: address already in use")))
			_ = log.Sync()
			out, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "address already in use") {
				t.Fatalf("the error is not in the log: %q", out)
			}
			if strings.Contains(string(out), "stacktrace") || strings.Count(string(out), "\n") != 1 {
				t.Errorf("the log carries a stack trace:\n%s", out)
			}
		})
	}
}
