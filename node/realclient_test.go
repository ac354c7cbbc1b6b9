//go:build realclient

package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// realClientTimeout bounds the python driver; it is told a little less so
// that it reports its own diagnostics before being killed.
const realClientTimeout = 2 * time.Minute

// TestRealClientDownload is the promise to real users: two libtorrent
// clients that can only meet through Karuta, a seeder announcing over HTTP
// and a leecher over UDP, complete a download with intact data.
func TestRealClientDownload(t *testing.T) {
	py := libtorrentPython(t)
	n := startNode(t, "127.0.0.1", nil)
	a := n.Addrs()

	summary := runRealClient(t, py, "http://"+a.HTTP+"/announce", "udp://"+a.UDP+"/announce")
	t.Logf("realclient: %s", summary)

	// Every announce libtorrent made, started, completed and stopped, is
	// one it should have had answered: none may be a client or internal
	// error.
	metricsURL := "http://" + a.Metrics + "/metrics"
	announces := func(m promSamples, frontend, result string) float64 {
		return m.value("karuta_frontend_requests_total", "frontend", frontend, "action", "announce", "result", result)
	}
	eventually.True(t, 5*time.Second, "metrics count ok announces on both frontends", func() bool {
		m := fetchPromSamples(t, metricsURL)
		return announces(m, "http", "ok") > 0 && announces(m, "udp", "ok") > 0
	})
	m := fetchPromSamples(t, metricsURL)
	for _, frontend := range []string{"http", "udp"} {
		t.Logf("%s announces: ok %v, client_error %v, error %v", frontend,
			announces(m, frontend, "ok"), announces(m, frontend, "client_error"), announces(m, frontend, "error"))
		for _, result := range []string{"client_error", "error"} {
			if v := announces(m, frontend, result); v != 0 {
				t.Errorf("%s frontend answered %v of libtorrent's announces with result %s", frontend, v, result)
			}
		}
	}
}

// libtorrentPython returns a python that can import libtorrent. Debian's
// python3-libtorrent lives in the system python, so /usr/bin/python3 comes
// before whatever python3 is first on PATH (pyenv's lacks it).
func libtorrentPython(t *testing.T) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	var tried []string
	for _, py := range candidates {
		out, err := exec.Command(py, "-c", "import libtorrent as lt; print(lt.__version__)").CombinedOutput()
		if err == nil {
			t.Logf("using %s with libtorrent %s", py, strings.TrimSpace(string(out)))
			return py
		}
		tried = append(tried, py+": "+pythonErrorLine(string(out), err))
	}
	t.Fatalf("no python3 can import libtorrent; run .ci/install-test-deps (installs python3-libtorrent). Tried:\n%s", strings.Join(tried, "\n"))
	return ""
}

// pythonErrorLine is the last line python wrote, where it names the error,
// or err when it wrote nothing.
func pythonErrorLine(out string, err error) string {
	out = strings.TrimSpace(out)
	if out == "" {
		return err.Error()
	}
	return out[strings.LastIndex(out, "\n")+1:]
}

// runRealClient runs testdata/realclient.py against the two tracker URLs and
// returns its JSON summary line. On failure it logs everything the script
// wrote and fails the test.
func runRealClient(t *testing.T, py, seedTracker, leechTracker string) string {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("testdata", "realclient.py"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), realClientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, script,
		"--seed-tracker", seedTracker,
		"--leech-tracker", leechTracker,
		"--workdir", t.TempDir(),
		"--timeout", strconv.Itoa(int((realClientTimeout - 15*time.Second).Seconds())),
	)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	t.Logf("realclient.py ran for %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Logf("realclient.py stderr:\n%s", stderr.String())
		t.Logf("realclient.py stdout:\n%s", stdout.String())
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("realclient.py killed after %s", realClientTimeout)
		}
		t.Fatalf("realclient.py: %v", err)
	}
	if testing.Verbose() {
		t.Logf("realclient.py stderr:\n%s", stderr.String())
	}
	line := strings.TrimSpace(stdout.String())
	line = line[strings.LastIndex(line, "\n")+1:]
	var summary struct {
		OK bool `json:"ok"`
	}
	if err := json.Unmarshal([]byte(line), &summary); err != nil || !summary.OK {
		t.Fatalf("realclient.py exited 0 without a success summary; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	return line
}

// promSamples is one scrape of the Prometheus text format: for each series
// name, its samples as label sets with values.
type promSamples map[string][]promSample

type promSample struct {
	labels map[string]string
	value  float64
}

// value returns the sample of name whose labels include the given
// key/value pairs, or 0 if there is none.
func (m promSamples) value(name string, kv ...string) float64 {
	for _, s := range m[name] {
		match := true
		for i := 0; i+1 < len(kv); i += 2 {
			if s.labels[kv[i]] != kv[i+1] {
				match = false
				break
			}
		}
		if match {
			return s.value
		}
	}
	return 0
}

func fetchPromSamples(t *testing.T, url string) promSamples {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	m, err := parsePromText(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return m
}

// parsePromText reads the Prometheus text exposition format: comments are
// skipped, label values unescaped, timestamps ignored.
func parsePromText(r io.Reader) (promSamples, error) {
	m := promSamples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		bad := func(what string) error {
			return fmt.Errorf("metrics: %s in %q", what, line)
		}
		labels := map[string]string{}
		name, rest, hasLabels := strings.Cut(line, "{")
		if hasLabels {
			for !strings.HasPrefix(rest, "}") {
				key, after, ok := strings.Cut(rest, "=")
				if !ok {
					return nil, bad("unterminated labels")
				}
				quoted, err := strconv.QuotedPrefix(after)
				if err != nil {
					return nil, bad("bad label value")
				}
				labels[strings.TrimSpace(key)], _ = strconv.Unquote(quoted)
				rest = strings.TrimPrefix(after[len(quoted):], ",")
			}
			rest = rest[1:]
		} else {
			name, rest, _ = strings.Cut(line, " ")
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, bad("no value")
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, bad("bad value")
		}
		m[name] = append(m[name], promSample{labels: labels, value: v})
	}
	return m, sc.Err()
}
