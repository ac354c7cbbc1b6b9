// Command deploycheck holds the checks of the deploy stage
// (deploy/test/run.sh) that are easier to get right in Go than in shell:
// the Grafana dashboard against a live Prometheus, alert states, the
// config inside the rendered Kubernetes manifests, free ports and the
// signed announce tokens for the jwt hook.
//
//	deploycheck dashboard -prom URL -file DASHBOARD.json -scrape-interval 2s -window 2m
//	deploycheck alert -prom URL -name ALERT -want firing|inactive -within 90s
//	deploycheck k8s-config -rendered MANIFESTS.yaml -out KARUTA.yaml
//	deploycheck ports N
//	deploycheck jwt-key DIR
//	deploycheck jwt-token DIR INFOHASH_HEX
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "deploycheck: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("want a command: dashboard, alert, k8s-config, ports, jwt-key or jwt-token")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	promURL := fs.String("prom", "", "Prometheus base `URL`")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	ctx := context.Background()
	switch cmd {
	case "dashboard":
		file := fs.String("file", "", "Grafana dashboard JSON")
		scrape := fs.Duration("scrape-interval", 15*time.Second, "the data source's scrape interval, as set in Grafana")
		window := fs.Duration("window", 2*time.Minute, "query the data of the last `window`")
		if err := fs.Parse(args); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		return checkDashboard(ctx, &prom{base: *promURL, hc: http.DefaultClient}, *file, *window, *scrape, out)
	case "alert":
		name := fs.String("name", "", "alert name")
		want := fs.String("want", "firing", "firing, or inactive (neither pending nor firing)")
		within := fs.Duration("within", time.Minute, "how long the state may take to arrive")
		if err := fs.Parse(args); err != nil {
			return err
		}
		return waitAlert(ctx, &prom{base: *promURL, hc: http.DefaultClient}, *name, *want, *within, out)
	case "k8s-config":
		rendered := fs.String("rendered", "", "output of kustomize build")
		outFile := fs.String("out", "", "where to write the karuta.yaml the manifests carry")
		if err := fs.Parse(args); err != nil {
			return err
		}
		return extractK8sConfig(*rendered, *outFile)
	case "ports":
		n, err := strconv.Atoi(strings.Join(args, ""))
		if err != nil || n < 1 || n > 64 {
			return fmt.Errorf("ports: want a count from 1 to 64, got %q", strings.Join(args, " "))
		}
		ports, err := freePorts(n)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, strings.Trim(fmt.Sprint(ports), "[]"))
		return nil
	case "jwt-key":
		if len(args) != 1 {
			return errors.New("jwt-key: want DIR")
		}
		return writeJWTKey(args[0])
	case "jwt-token":
		if len(args) != 2 {
			return errors.New("jwt-token: want DIR INFOHASH_HEX")
		}
		tok, err := signToken(args[0], args[1], time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintln(out, tok)
		return nil
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// waitAlert polls Prometheus until the alert is firing (want "firing") or
// is neither pending nor firing (want "inactive").
func waitAlert(ctx context.Context, p *prom, name, want string, within time.Duration, out io.Writer) error {
	if want != "firing" && want != "inactive" {
		return fmt.Errorf("alert: -want %q; want firing or inactive", want)
	}
	start := time.Now()
	deadline := start.Add(within)
	last := "none"
	for {
		data, err := p.get(ctx, "/api/v1/alerts", nil)
		if err == nil {
			var a struct {
				Alerts []struct {
					Labels map[string]string `json:"labels"`
					State  string            `json:"state"`
				} `json:"alerts"`
			}
			if err = json.Unmarshal(data, &a); err == nil {
				var states []string
				for _, al := range a.Alerts {
					if al.Labels["alertname"] == name {
						states = append(states, al.State+" "+al.Labels["instance"]+al.Labels["job"])
					}
				}
				last = strings.Join(states, ", ")
				firing := strings.Contains(last, "firing")
				if (want == "firing" && firing) || (want == "inactive" && len(states) == 0) {
					fmt.Fprintf(out, "alert %s is %s after %s (%s)\n", name, want, time.Since(start).Round(time.Second), last)
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("alert %s not %s within %s; last seen: %s: %w", name, want, within, last, err)
			}
			return fmt.Errorf("alert %s not %s within %s; last seen: %s", name, want, within, last)
		}
		time.Sleep(time.Second)
	}
}

// extractK8sConfig finds the Secret kustomize generated from karuta.yaml
// in rendered manifests, checks the StatefulSet mounts that very Secret
// (kustomize rewrote its name with the hash suffix), and writes the
// config out for `karuta config check`.
func extractK8sConfig(rendered, outFile string) error {
	raw, err := os.ReadFile(rendered)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var secret, mounted string
	var config []byte
	kinds := map[string]int{}
	for {
		var doc struct {
			Kind     string                `yaml:"kind"`
			Metadata struct{ Name string } `yaml:"metadata"`
			Data     map[string]string     `yaml:"data"`
			Spec     struct {
				Template struct {
					Spec struct {
						Volumes []struct {
							Secret struct {
								SecretName string `yaml:"secretName"`
							} `yaml:"secret"`
						} `yaml:"volumes"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("%s: %w", rendered, err)
		}
		kinds[doc.Kind]++
		switch doc.Kind {
		case "Secret":
			if b64, ok := doc.Data["karuta.yaml"]; ok {
				secret = doc.Metadata.Name
				if config, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(b64), "")); err != nil {
					return fmt.Errorf("secret %s: karuta.yaml: %w", secret, err)
				}
			}
		case "StatefulSet":
			for _, v := range doc.Spec.Template.Spec.Volumes {
				if v.Secret.SecretName != "" {
					mounted = v.Secret.SecretName
				}
			}
		}
	}
	switch {
	case secret == "":
		return fmt.Errorf("%s: no Secret with karuta.yaml among %v", rendered, kinds)
	case mounted != secret:
		return fmt.Errorf("%s: the StatefulSet mounts secret %q, but the generated one is %q", rendered, mounted, secret)
	}
	return os.WriteFile(outFile, config, 0o600)
}

// freePorts returns n distinct ports free for both TCP and UDP on every
// address at the time of asking. Docker publishes them on 0.0.0.0 a
// little later, so they are taken below the kernel's ephemeral range: the
// tests running beside this stage open thousands of client connections,
// each on an ephemeral port, and one of those must not take a port chosen
// here before Docker binds it.
func freePorts(n int) ([]int, error) {
	var ports []int
	var held []io.Closer
	defer func() {
		for _, c := range held {
			_ = c.Close() // a probe socket: nothing to lose
		}
	}()
	lo, hi := portsBelowEphemeral()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 20*n {
			return nil, errors.New("ports: could not find enough ports free for TCP and UDP")
		}
		want := 0 // the kernel's choice, when there is no room below its range
		if hi > lo {
			want = lo + mrand.IntN(hi-lo) //nolint:gosec // G404: a port to try, not a secret
		}
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", want))
		if err != nil {
			continue
		}
		held = append(held, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		if err != nil {
			continue
		}
		held = append(held, pc)
		ports = append(ports, port)
	}
	return ports, nil
}

// portsBelowEphemeral returns a range of ports under the kernel's
// ephemeral range (net.ipv4.ip_local_port_range), or an empty one where
// that cannot be read or leaves no room.
func portsBelowEphemeral() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	first, err := strconv.Atoi(f[0])
	if err != nil || first <= 11000 {
		return 0, 0
	}
	return 10000, first
}

// writeJWTKey makes an Ed25519 key pair for the jwt hook: DIR/jwt.seed
// (private, for jwt-token) and DIR/jwt.pub.pem (for the hook's keys).
func writeJWTKey(dir string) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "jwt.seed"), []byte(hex.EncodeToString(priv.Seed())), 0o600); err != nil {
		return err
	}
	// 0600 like everything else here; run.sh makes it readable for the
	// container's user when it mounts it.
	return os.WriteFile(filepath.Join(dir, "jwt.pub.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
}

// signToken signs an EdDSA JSON Web Token for one infohash, valid for an
// hour, with the key writeJWTKey left in dir.
func signToken(dir, infohash string, now time.Time) (string, error) {
	seedHex, err := os.ReadFile(filepath.Join(dir, "jwt.seed"))
	if err != nil {
		return "", err
	}
	seed, err := hex.DecodeString(strings.TrimSpace(string(seedHex)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return "", fmt.Errorf("jwt-token: %s/jwt.seed is not a hex Ed25519 seed", dir)
	}
	if b, err := hex.DecodeString(infohash); err != nil || len(b) != 20 {
		return "", fmt.Errorf("jwt-token: infohash %q is not 40 hex characters", infohash)
	}
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"EdDSA","typ":"JWT"}`))
	claims, err := json.Marshal(map[string]any{"infohash": infohash, "exp": now.Add(time.Hour).Unix()})
	if err != nil {
		return "", err
	}
	signing := header + "." + enc.EncodeToString(claims)
	sig := ed25519.Sign(ed25519.NewKeyFromSeed(seed), []byte(signing))
	return signing + "." + enc.EncodeToString(sig), nil
}
