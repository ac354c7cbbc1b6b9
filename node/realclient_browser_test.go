//go:build realclient

package node

import (
	"context"
	"encoding/json"
	"html/template"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/pion/ice/v4"
	"github.com/pion/webrtc/v4"
)

// browserTimeout bounds the whole exchange with the browser.
const browserTimeout = 60 * time.Second

// TestRealClientBrowser: a page in headless Chromium, with nothing but the
// browser's own WebSocket and RTCPeerConnection, announces an offer to
// Karuta's WebTorrent tracker; a Go pion peer in the swarm gets the offer
// through the tracker, answers through it, and the two exchange a message
// over a WebRTC data channel. No STUN or TURN: host candidates on loopback.
func TestRealClientBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed; run .ci/install-test-deps")
	}
	n := startNode(t, "127.0.0.1", func(c *Config) { c.Frontends.WebTorrent.Addr = "127.0.0.1:0" })
	tracker := "ws://" + n.Addrs().WebTorrent + "/announce"
	infoHash := strings.Repeat("k", 20)

	// The Go peer joins the swarm first, so the page's offer goes to it.
	got := make(chan string, 1)
	goPeer(t, tracker, infoHash, got)

	// The page reports what its data channel received by fetching /result.
	results := make(chan string, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = browserPage.Execute(w, map[string]string{"Tracker": tracker, "InfoHash": infoHash})
	})
	mux.HandleFunc("/result", func(w http.ResponseWriter, r *http.Request) {
		select {
		case results <- r.URL.Query().Get("v"):
		default:
		}
		w.WriteHeader(http.StatusNoContent)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	ctx, cancel := context.WithTimeout(t.Context(), browserTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir="+t.TempDir(),
		// Host candidates only, and on loopback: real addresses rather
		// than mDNS names, and the loopback interface allowed.
		"--disable-features=WebRtcHideLocalIpsWithMdns", "--allow-loopback-in-peer-connection",
		"http://"+ln.Addr().String()+"/")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	select {
	case v := <-results:
		if v != "pong from go" {
			t.Fatalf("the page reported %q; want the Go peer's reply", v)
		}
	case <-ctx.Done():
		t.Fatalf("no result from the page within %s; chromium said:\n%s", browserTimeout, tail(out.String(), 3000))
	}
	select {
	case m := <-got:
		if m != "ping from browser" {
			t.Errorf("the Go peer received %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Error("the Go peer received nothing on its data channel")
	}
	m := fetchPromSamples(t, "http://"+n.Addrs().Metrics+"/metrics")
	for _, kind := range []string{"offer", "answer"} {
		if v := m.value("karuta_webtorrent_signals_total", "kind", kind, "result", "delivered"); v != 1 {
			t.Errorf("%s delivered %v times; want 1", kind, v)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// goPeer joins the swarm over the tracker and answers the first offer it
// is sent with a pion peer connection that replies to each data-channel
// message; what it receives goes to got.
func goPeer(t *testing.T, tracker, infoHash string, got chan<- string) {
	t.Helper()
	nc, br, _, err := ws.Dial(t.Context(), tracker)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	if br != nil {
		ws.PutReader(br)
	}
	peerID := strings.Repeat("g", 20)
	send := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return wsutil.WriteClientText(nc, b)
	}
	if err := send(map[string]any{"action": "announce", "info_hash": infoHash, "peer_id": peerID, "left": 0, "event": "started", "numwant": 0}); err != nil {
		t.Fatal(err)
	}
	first, err := wsutil.ReadServerText(nc)
	if err != nil || !strings.Contains(string(first), `"complete":1`) {
		t.Fatalf("Go peer's announce: %s, %v", first, err)
	}

	se := webrtc.SettingEngine{}
	se.SetIncludeLoopbackCandidate(true)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeTCP4})
	api := webrtc.NewAPI(webrtc.WithSettingEngine(se))
	pc, err := api.NewPeerConnection(webrtc.Configuration{}) // no ICE servers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	pc.OnDataChannel(func(dc *webrtc.DataChannel) {
		dc.OnMessage(func(msg webrtc.DataChannelMessage) {
			select {
			case got <- string(msg.Data):
			default:
			}
			_ = dc.SendText("pong from go")
		})
	})

	go func() {
		for {
			b, err := wsutil.ReadServerText(nc)
			if err != nil {
				return
			}
			var m struct {
				PeerID  string                     `json:"peer_id"`
				OfferID string                     `json:"offer_id"`
				Offer   *webrtc.SessionDescription `json:"offer"`
			}
			if json.Unmarshal(b, &m) != nil || m.Offer == nil {
				continue
			}
			if err := pc.SetRemoteDescription(*m.Offer); err != nil {
				t.Errorf("Go peer: set offer: %v", err)
				return
			}
			answer, err := pc.CreateAnswer(nil)
			if err != nil {
				t.Errorf("Go peer: create answer: %v", err)
				return
			}
			gathered := webrtc.GatheringCompletePromise(pc)
			if err := pc.SetLocalDescription(answer); err != nil {
				t.Errorf("Go peer: set answer: %v", err)
				return
			}
			<-gathered
			if err := send(map[string]any{
				"action": "announce", "info_hash": infoHash, "peer_id": peerID,
				"to_peer_id": m.PeerID, "offer_id": m.OfferID, "answer": pc.LocalDescription(),
			}); err != nil {
				t.Errorf("Go peer: send answer: %v", err)
			}
		}
	}()
}

// browserPage offers a data channel to the swarm through the tracker and
// reports the first message it receives on it.
var browserPage = template.Must(template.New("page").Parse(`<!doctype html>
<meta charset="utf-8">
<script>
const report = v => fetch('/result?v=' + encodeURIComponent(v));
window.onerror = e => report('error: ' + e);
(async () => {
  const ws = new WebSocket({{.Tracker}});
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error('websocket')); });
  const pc = new RTCPeerConnection({iceServers: []});
  const dc = pc.createDataChannel('karuta');
  dc.onopen = () => dc.send('ping from browser');
  dc.onmessage = e => report(e.data);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(ok => {
    if (pc.iceGatheringState === 'complete') return ok();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && ok();
  });
  let peerID = '';
  for (let i = 0; i < 20; i++) peerID += String.fromCharCode(Math.floor(Math.random() * 256));
  ws.onmessage = async e => {
    const m = JSON.parse(e.data);
    if (m['failure reason']) report('failure: ' + m['failure reason']);
    if (m.answer) await pc.setRemoteDescription(m.answer);
  };
  ws.send(JSON.stringify({
    action: 'announce', info_hash: {{.InfoHash}}, peer_id: peerID, numwant: 1, left: 1, event: 'started',
    offers: [{offer_id: 'browser-offer-1', offer: {type: pc.localDescription.type, sdp: pc.localDescription.sdp}}],
  }));
})().catch(e => report('error: ' + e));
</script>
`))
