//go:build realclient

package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// wsPeer is a WebTorrent client socket speaking the protocol by hand.
type wsPeer struct {
	t  *testing.T
	nc net.Conn
}

func dialWS(t *testing.T, addr string) *wsPeer {
	t.Helper()
	nc, br, _, err := ws.Dial(t.Context(), "ws://"+addr+"/announce")
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	if br != nil {
		ws.PutReader(br)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &wsPeer{t: t, nc: nc}
}

// ask sends a message and returns the first reply with an action.
func (p *wsPeer) ask(v any) map[string]any {
	p.t.Helper()
	b, _ := json.Marshal(v)
	if err := wsutil.WriteClientText(p.nc, b); err != nil {
		p.t.Fatalf("send: %v", err)
	}
	_ = p.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		b, err := wsutil.ReadServerText(p.nc)
		if err != nil {
			p.t.Fatalf("read: %v", err)
		}
		var m map[string]any
		if json.Unmarshal(b, &m) == nil && m["offer"] == nil && m["answer"] == nil {
			return m
		}
	}
}

// scrapeWS returns the peers counted in each swarm, as seen from a node.
func scrapeWS(p *wsPeer, ihs []string) (map[string]int, error) {
	m := p.ask(map[string]any{"action": "scrape", "info_hash": ihs})
	files, ok := m["files"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("scrape answered %v", m)
	}
	out := map[string]int{}
	for ih, f := range files {
		c := f.(map[string]any)
		out[ih] = int(c["complete"].(float64) + c["incomplete"].(float64))
	}
	return out, nil
}

// TestRealClientWebTorrentNodeDies kills (SIGKILL, no leave) a node of
// three `karuta serve` processes while it holds WebSocket peers. The
// survivors drop those peers from every swarm once the node is declared
// dead, keep their own, and keep relaying offers between their own
// sockets.
func TestRealClientWebTorrentNodeDies(t *testing.T) {
	bin := buildKaruta(t)
	nodes := startProcCluster(t, bin, "d1", "d2", "d3")
	waitProcClusterFormed(t, nodes)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]

	var ihs []string
	for i := range 8 {
		ihs = append(ihs, fmt.Sprintf("swarm-%02d-%s", i, strings.Repeat("x", 11)))
	}
	// Each swarm: one peer on d1 and two on d3.
	announce := func(p *wsPeer, ih, id string) {
		if m := p.ask(map[string]any{"action": "announce", "info_hash": ih, "peer_id": id, "left": 0, "numwant": 0}); m["failure reason"] != nil {
			t.Fatalf("announce: %v", m)
		}
	}
	onD1 := dialWS(t, n1.ws)
	onD3 := []*wsPeer{dialWS(t, n3.ws), dialWS(t, n3.ws)}
	for i, ih := range ihs {
		announce(onD1, ih, fmt.Sprintf("d1-peer-%02d-%s", i, strings.Repeat("p", 9)))
		for j, p := range onD3 {
			announce(p, ih, fmt.Sprintf("d3-peer-%d%d-%s", i, j, strings.Repeat("p", 9)))
		}
	}
	watch := dialWS(t, n2.ws)
	check := func(n int) error {
		got, err := scrapeWS(watch, ihs)
		if err != nil {
			return err
		}
		for _, ih := range ihs {
			if got[ih] != n {
				return fmt.Errorf("swarm %q has %d peers seen from d2; want %d", ih[:8], got[ih], n)
			}
		}
		return nil
	}
	// The watching socket scrapes at most five times a second: it is held
	// to messages_per_second like any other.
	var last time.Time
	lastErr := errors.New("not checked yet")
	want := func(n int) func() error {
		return func() error {
			if time.Since(last) >= 200*time.Millisecond {
				last, lastErr = time.Now(), check(n)
			}
			return lastErr
		}
	}
	eventually.NoError(t, 10*time.Second, "every swarm has its three peers", want(3))

	killed := time.Now()
	if err := n3.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-n3.exited
	last, lastErr = time.Time{}, errors.New("not checked yet")
	eventually.NoError(t, 30*time.Second, "d3's peers are dropped", want(1))
	t.Logf("d3's WebSocket peers dropped from every swarm %s after it was killed", time.Since(killed).Round(100*time.Millisecond))
	swept := n1.scrape(t).value("karuta_cluster_webrtc_peers_swept_total") + n2.scrape(t).value("karuta_cluster_webrtc_peers_swept_total")
	if swept == 0 {
		t.Error("no survivor counted WebRTC peers swept")
	}

	// A new peer on d2 offers to the swarm: the offer reaches d1's peer,
	// and nothing is sent towards the dead node.
	before := n2.scrape(t).value("karuta_cluster_signals_total", "result", "no_node")
	offer := map[string]any{"offer_id": "after-death", "offer": map[string]any{"type": "offer", "sdp": "v=0"}}
	if m := watch.ask(map[string]any{"action": "announce", "info_hash": ihs[0], "peer_id": strings.Repeat("w", 20), "left": 1, "numwant": 5, "offers": []any{offer}}); m["failure reason"] != nil {
		t.Fatalf("announce with offer: %v", m)
	}
	_ = onD1.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		b, err := wsutil.ReadServerText(onD1.nc)
		if err != nil {
			t.Fatalf("d1's peer got no offer: %v", err)
		}
		if strings.Contains(string(b), "after-death") {
			break
		}
	}
	if after := n2.scrape(t).value("karuta_cluster_signals_total", "result", "no_node"); after != before {
		t.Errorf("d2 tried to send %v signals to a node not in the cluster", after-before)
	}
}
