package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// nodeClient reads the tracker nodes' operations pages: /metrics for the
// counters a run must not raise and the memory the nodes hold, /cluster
// for the replica count.
type nodeClient struct {
	urls   []string
	client *http.Client
}

func newNodeClient(urls []string) *nodeClient {
	return &nodeClient{urls: urls, client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}}
}

// maxMetricsPage bounds a metrics page read: a node's is about 30 KiB.
const maxMetricsPage = 16 << 20

// get fetches u whole.
func (nc *nodeClient) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := nc.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxMetricsPage))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &statusError{url: u, status: resp.Status, code: resp.StatusCode}
	}
	return b, nil
}

// statusError is an answer other than 200 OK.
type statusError struct {
	url, status string
	code        int
}

func (e *statusError) Error() string { return e.url + " answered " + e.status }

// scrape reads every node's metrics page.
func (nc *nodeClient) scrape(ctx context.Context) ([]metricPage, error) {
	pages := make([]metricPage, len(nc.urls))
	for i, u := range nc.urls {
		b, err := nc.get(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("--metrics: %w", err)
		}
		if pages[i], err = parseMetricPage(b); err != nil {
			return nil, fmt.Errorf("--metrics %s: %w", u, err)
		}
	}
	return pages, nil
}

// drain waits until no node has anything queued, or timeout passes, and
// returns the last pages read.
func (nc *nodeClient) drain(ctx context.Context, timeout time.Duration) ([]metricPage, error) {
	deadline := time.Now().Add(timeout)
	for {
		pages, err := nc.scrape(ctx)
		if err != nil {
			return nil, err
		}
		var left float64
		for _, p := range pages {
			left += queued(p)
		}
		if left == 0 || !time.Now().Before(deadline) {
			return pages, nil
		}
		select {
		case <-ctx.Done():
			return pages, nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// replicas asks the first node that answers /cluster for the configured
// owner count of a swarm; a node outside a cluster (404) holds every
// swarm alone, 1.
func (nc *nodeClient) replicas(ctx context.Context) (int, error) {
	var errs error
	for _, u := range nc.urls {
		cu, err := statusURL(u)
		if err != nil {
			return 0, err
		}
		b, err := nc.get(ctx, cu)
		var se *statusError
		if errors.As(err, &se) && se.code == http.StatusNotFound {
			return 1, nil
		}
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		var st struct {
			Ring struct {
				Replicas int `json:"replicas"`
			} `json:"ring"`
		}
		if err := json.Unmarshal(b, &st); err != nil || st.Ring.Replicas < 1 {
			return 0, fmt.Errorf("%s: not a cluster status", cu)
		}
		return st.Ring.Replicas, nil
	}
	return 0, errs
}

// statusURL is the /cluster page beside a /metrics URL.
func statusURL(metrics string) (string, error) {
	u, err := url.Parse(metrics)
	if err != nil {
		return "", fmt.Errorf("--metrics: %w", err)
	}
	u.Path, u.RawQuery = "/cluster", ""
	return u.String(), nil
}
