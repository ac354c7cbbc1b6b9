//go:build netns && linux

package netns

import (
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/karuta-tracker/karuta/frontends/http/bencode"
	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// The probe announces fresh peers and reads every swarm through every
// serving node all the time, and checks each answer against what the
// cluster has been told: a peer must be in a node's answer once some
// process that holds it (an owner it was delivered to) is alive and
// connected to that node. It records the worst moment, and after a heal
// how long it takes until every answer is whole again.

const (
	probeSwarms = 48
	// probeRound is how often each serving node is read.
	probeRound = 100 * time.Millisecond
	// readsPerRound swarms are read at each node per round, in turn.
	readsPerRound = 12
	// deliveryLag is how long after its announce was answered a peer may
	// still be on its way to its owners (forward_delay, a round trip, a
	// busy machine): only older peers are expected in answers.
	deliveryLag = 500 * time.Millisecond
	readerPort  = 60000 // + node index: the probe's reading peers
	freshPort   = 20000 // + sequence: peers announced during the test
)

func swarmHash(i int) bittorrent.InfoHash {
	return bittorrent.InfoHash{0x6b, 0x66, 0x6f, byte(i), byte(i >> 8)}
}

// peer is one announced peer and where it lives.
type peer struct {
	swarm int
	port  uint16
	via   string
	at    time.Time // when its announce was answered
	// holders are the nodes it was delivered to: the swarm's owners, by
	// the placement of the members at the time, that were connected to
	// via then. Graceful leaves replace the leaver by everyone.
	holders []string
	// uncertain peers went through a node killed before they could be
	// delivered: counted at the end, not expected meanwhile.
	uncertain bool
}

// moment is the worst answer seen: the most expected peers missing.
type moment struct {
	at      time.Time
	node    string
	swarm   int
	missing []uint16
	want    int
	when    string // relative to the last change
	first   string // the first missing peer's story
	took    time.Duration
}

func (m moment) String() string {
	ms := slices.Clone(m.missing)
	slices.Sort(ms)
	return fmt.Sprintf("%s: %s lacked %d of %d peers of swarm %d in an answer that took %s (ports %v; %s)",
		m.when, m.node, len(ms), m.want, m.swarm, m.took.Round(time.Millisecond), ms[:min(8, len(ms))], m.first)
}

type event struct {
	at   time.Time
	what string
}

// mark records a change the probe's findings are reported against.
func (pr *probe) mark(what string) time.Time {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	now := time.Now()
	pr.events = append(pr.events, event{now, what})
	return now
}

// relative names a moment by the last change before it.
func (pr *probe) relative(t time.Time) string {
	last := event{what: "start"}
	for _, e := range pr.events {
		if !e.at.After(t) {
			last = e
		}
	}
	if last.at.IsZero() {
		return t.Format("15:04:05.000")
	}
	return fmt.Sprintf("%s after %s", t.Sub(last.at).Round(time.Millisecond), last.what)
}

// probe drives the checks; its methods are safe for concurrent use.
type probe struct {
	l        *lab
	replicas int

	mu      sync.Mutex
	peers   []*peer
	serving map[string]bool // nodes clients are sent to
	members []string        // the cluster's members, for placement
	group   map[string]int  // connectivity: nodes with equal ids see each other
	splits  []split         // every change of group, in order
	killed  map[string]time.Time
	seq     int
	worst   moment
	fails   int // answers missing an expected peer
	late    int // of which answers slower than readTimeout, outside the promise
	answers int
	latency []time.Duration // of every answer checked
	errs    []string
	events  []event   // the changes, for reporting moments against them
	samples []moment  // the first answers that lacked a peer
	healAt  time.Time // last heal not yet converged; zero when whole
	merged  bool      // every ring holds every member again since healAt
	whole   time.Duration
	clients map[string]*udpClient

	stop chan struct{}
	done sync.WaitGroup
}

func newProbe(l *lab, replicas int) *probe {
	return &probe{
		l: l, replicas: replicas,
		serving: map[string]bool{}, group: map[string]int{},
		killed: map[string]time.Time{}, clients: map[string]*udpClient{}, stop: make(chan struct{}),
	}
}

// join records that p is a member and serves clients.
func (pr *probe) join(p *proc) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if !slices.Contains(pr.members, p.name) {
		pr.members = append(pr.members, p.name)
	}
	pr.serving[p.name] = true
	delete(pr.killed, p.name)
	pr.group[p.name] = 0
	delete(pr.clients, p.name) // a restarted node has new connection ids
}

// leaving records a graceful leave: p stops serving now, and whatever it
// held is handed over, so from now on any member may hold it.
func (pr *probe) leaving(p *proc) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	delete(pr.serving, p.name)
	pr.members = slices.DeleteFunc(pr.members, func(s string) bool { return s == p.name })
	for _, pe := range pr.peers {
		if slices.Contains(pe.holders, p.name) || pe.via == p.name {
			pe.holders = slices.Clone(pr.members)
		}
	}
}

// kill records a crash: what p held and had not passed on is lost.
func (pr *probe) kill(p *proc, at time.Time) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	delete(pr.serving, p.name)
	pr.members = slices.DeleteFunc(pr.members, func(s string) bool { return s == p.name })
	pr.killed[p.name] = at
	for _, pe := range pr.peers {
		if pe.via == p.name && pe.at.Add(deliveryLag).After(at) {
			pe.uncertain = true
		}
	}
}

type split struct {
	at    time.Time
	group map[string]int
}

// split sets who sees whom: nodes in the same group are connected.
func (pr *probe) split(groups map[string]int) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for n, g := range groups {
		pr.group[n] = g
	}
	pr.splits = append(pr.splits, split{time.Now(), maps.Clone(pr.group)})
}

// delivered reports whether pe, announced through its via node, reached
// holder h: they were not separated before it had time to travel.
func (pr *probe) delivered(pe *peer, h string) bool {
	for _, s := range pr.splits {
		if s.at.After(pe.at) && !s.at.After(pe.at.Add(deliveryLag)) && s.group[pe.via] != s.group[h] {
			return false
		}
	}
	return true
}

// heal reconnects everyone. Until every answer is whole again the sides
// still count as apart (their views have not merged yet); the probe
// measures how long that takes.
func (pr *probe) heal(at time.Time) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.healAt, pr.whole, pr.merged = at, 0, false
	pr.events = append(pr.events, event{at, "heal"})
}

// ringsMerged records that every node's ring holds every member again
// after the heal: from the first whole read after it, the sides count as
// one again. Until then views can still disagree and a node that came
// back can answer by a ring of its own.
func (pr *probe) ringsMerged() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.merged = true
}

// converged ends a heal: everyone is connected again, and what a node took
// while no owner could be reached is now held by that node.
func (pr *probe) converged() {
	for n := range pr.group {
		pr.group[n] = 0
	}
	pr.splits = append(pr.splits, split{time.Now(), maps.Clone(pr.group)})
	for _, pe := range pr.peers {
		if _, dead := pr.killed[pe.via]; !dead && !slices.Contains(pe.holders, pe.via) {
			pe.holders = append(pe.holders, pe.via)
		}
	}
	pr.healAt = time.Time{}
}

// connected reports whether a and b see each other.
func (pr *probe) connected(a, b string) bool { return pr.group[a] == pr.group[b] }

// placement is the members' ring, as the nodes build it.
func (pr *probe) owners(swarm int) []string {
	var ms []ring.Member
	for _, name := range pr.members {
		p := pr.l.nodes[name]
		ms = append(ms, ring.Member{Name: name, Datacenter: p.dc, Zone: name})
	}
	r, err := ring.New(ms, ring.Options{EveryDatacenter: pr.l.every})
	if err != nil {
		return nil
	}
	var out []string
	for _, o := range r.Owners(swarmHash(swarm), pr.replicas, nil) {
		out = append(out, r.Members()[o].Name)
	}
	return out
}

// expected lists the ports node n must show for swarm at now: the peers
// delivered to a live holder connected to n. Without strict, as after a
// heal, every peer with a live holder or a live via node counts,
// wherever it is.
func (pr *probe) expected(n string, swarm int, now time.Time, strict bool) []uint16 {
	var out []uint16
	for _, pe := range pr.peers {
		if pe.swarm != swarm || pe.uncertain || pe.at.Add(deliveryLag).After(now) {
			continue
		}
		_, viaDead := pr.killed[pe.via]
		ok := !strict && !viaDead
		for _, h := range pe.holders {
			if _, dead := pr.killed[h]; !ok && !dead && pr.delivered(pe, h) && (!strict || pr.connected(h, n)) {
				ok = true
			}
		}
		if ok {
			out = append(out, pe.port)
		}
	}
	return out
}

// announce adds one peer to swarm through node via (UDP or HTTP) and
// checks the answer too.
func (pr *probe) announce(via *proc, swarm int, useHTTP bool) error {
	pr.mu.Lock()
	pr.seq++
	port := uint16(freshPort + pr.seq)
	pr.mu.Unlock()
	sent := time.Now()
	ports, err := pr.ask(via, swarm, port, 0, useHTTP)
	if err != nil {
		return err
	}
	now := time.Now()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	var holders []string
	for _, o := range pr.owners(swarm) {
		if pr.connected(o, via.name) {
			holders = append(holders, o)
		}
	}
	_, viaKilled := pr.killed[via.name]
	pr.peers = append(pr.peers, &peer{swarm: swarm, port: port, via: via.name, at: now, holders: holders, uncertain: viaKilled})
	pr.check(via.name, swarm, ports, sent, now, port)
	return nil
}

// read asks node n for swarm as its reading peer and checks the answer.
func (pr *probe) read(p *proc, swarm int) error {
	sent := time.Now()
	ports, err := pr.ask(p, swarm, uint16(readerPort+p.idx), 1, false)
	if err != nil {
		return err
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.check(p.name, swarm, ports, sent, time.Now(), 0)
	return nil
}

// check compares an answer with what was expected when the request was
// sent; self is the announcer's port, never in its own answer.
func (pr *probe) check(n string, swarm int, got map[uint16]bool, sent, now time.Time, self uint16) {
	pr.answers++
	pr.latency = append(pr.latency, now.Sub(sent))
	var missing []uint16
	want := pr.expected(n, swarm, sent, true)
	for _, port := range want {
		if port != self && !got[port] {
			missing = append(missing, port)
		}
	}
	if len(missing) == 0 {
		return
	}
	pr.fails++
	if now.Sub(sent) > readTimeout {
		pr.late++
	}
	m := moment{at: sent, node: n, swarm: swarm, missing: missing, want: len(want), when: pr.relative(sent), took: now.Sub(sent)}
	m.first = pr.story(swarm, missing[0])
	if len(missing) > len(pr.worst.missing) {
		pr.worst = m
	}
	if len(pr.samples) < 5 {
		pr.samples = append(pr.samples, m)
	}
}

// ask announces port to swarm at p and returns the ports in the answer.
func (pr *probe) ask(p *proc, swarm int, port uint16, left int64, useHTTP bool) (map[uint16]bool, error) {
	if useHTTP {
		return pr.askHTTP(p, swarm, port, left)
	}
	pr.mu.Lock()
	c := pr.clients[p.name]
	if c == nil {
		c = &udpClient{addr: p.clientAddr(), l: pr.l}
		pr.clients[p.name] = c
	}
	pr.mu.Unlock()
	return c.announce(swarmHash(swarm), port, left)
}

func peerID(port uint16) [20]byte {
	var id [20]byte
	copy(id[:], "-KF0001-")
	binary.BigEndian.PutUint16(id[18:], port)
	return id
}

func (pr *probe) askHTTP(p *proc, swarm int, port uint16, left int64) (map[uint16]bool, error) {
	ih, id := swarmHash(swarm), peerID(port)
	q := fmt.Sprintf("info_hash=%s&peer_id=%s&port=%d&uploaded=0&downloaded=0&left=%d&compact=1&numwant=200",
		url.QueryEscape(string(ih[:])), url.QueryEscape(string(id[:])), port, left)
	resp, err := pr.l.http.Get("http://" + p.clientAddr() + "/announce?" + q)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	v, err := bencode.Decode(body)
	if err != nil {
		return nil, fmt.Errorf("announce to %s: %w", p.name, err)
	}
	d, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("announce to %s: answer is not a dictionary", p.name)
	}
	if reason, ok := d["failure reason"]; ok {
		return nil, fmt.Errorf("announce to %s: failure %v", p.name, reason)
	}
	peers, _ := d["peers"].(string)
	return compactPorts([]byte(peers)), nil
}

func compactPorts(b []byte) map[uint16]bool {
	out := make(map[uint16]bool, len(b)/6)
	for ; len(b) >= 6; b = b[6:] {
		if net.IP(b[:4]).String() == clientIP {
			out[binary.BigEndian.Uint16(b[4:6])] = true
		}
	}
	return out
}

// run reads through every serving node each round, and announces two
// fresh peers per round through the nodes in turn, until stopped. A node
// still answering the previous round's reads (one waiting out
// read_timeout for owners it cannot reach) skips a round instead of
// holding up the others.
func (pr *probe) run() {
	busy := map[string]*atomic.Bool{}
	spawn := func(key string, f func()) {
		b := busy[key]
		if b == nil {
			b = &atomic.Bool{}
			busy[key] = b
		}
		if !b.CompareAndSwap(false, true) {
			return
		}
		pr.done.Add(1)
		go func() {
			defer pr.done.Done()
			defer b.Store(false)
			f()
		}()
	}
	pr.done.Add(1)
	go func() {
		defer pr.done.Done()
		tick := time.NewTicker(probeRound)
		defer tick.Stop()
		for round := 0; ; round++ {
			select {
			case <-pr.stop:
				return
			case <-tick.C:
			}
			serving := pr.servingNodes()
			if len(serving) == 0 {
				continue
			}
			for i, p := range serving {
				spawn(p.name, func() {
					for k := range readsPerRound {
						sw := (round*readsPerRound + k + i*7) % probeSwarms
						if err := pr.read(p, sw); err != nil {
							pr.fail(p, err)
						}
					}
				})
			}
			for k := range 2 {
				via := serving[(round*2+k)%len(serving)]
				spawn(fmt.Sprint("announce", k), func() {
					if err := pr.announce(via, (round*5+k*17)%probeSwarms, k == 1); err != nil {
						pr.fail(via, err)
					}
				})
			}
			pr.checkWhole()
		}
	}()
}

// servingNodes lists the nodes clients are sent to, in the order added.
func (pr *probe) servingNodes() []*proc {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	var out []*proc
	for _, name := range pr.l.order {
		if pr.serving[name] {
			out = append(out, pr.l.nodes[name])
		}
	}
	return out
}

// fail records a request that got no answer from a node that should be
// serving.
func (pr *probe) fail(p *proc, err error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.serving[p.name] {
		pr.errs = append(pr.errs, fmt.Sprintf("%s: %v", p.name, err))
	}
}

// checkWhole, after a heal, reads everything once through every node and
// records when nothing is missing any more.
func (pr *probe) checkWhole() {
	pr.mu.Lock()
	heal, merged := pr.healAt, pr.merged
	pr.mu.Unlock()
	if heal.IsZero() || !merged {
		return
	}
	if n, _ := pr.missingEverywhere(false); n == 0 {
		pr.mu.Lock()
		pr.whole = time.Since(heal)
		pr.converged()
		pr.mu.Unlock()
	}
}

// missingEverywhere reads every swarm through every serving node and
// returns the number of expected peers missing, with a few examples.
func (pr *probe) missingEverywhere(strict bool) (int, []string) {
	serving := pr.servingNodes()
	total := 0
	var sample []string
	for _, p := range serving {
		for sw := range probeSwarms {
			sent := time.Now()
			ports, err := pr.ask(p, sw, uint16(readerPort+p.idx), 1, false)
			if err != nil {
				total++
				continue
			}
			pr.mu.Lock()
			for _, port := range pr.expected(p.name, sw, sent, strict) {
				if !ports[port] {
					total++
					if len(sample) < 5 {
						sample = append(sample, fmt.Sprintf("%s lacks %s", p.name, pr.story(sw, port)))
					}
				}
			}
			pr.mu.Unlock()
		}
	}
	return total, sample
}

// story tells where a peer came from.
func (pr *probe) story(swarm int, port uint16) string {
	for _, pe := range pr.peers {
		if pe.swarm == swarm && pe.port == port {
			return fmt.Sprintf("%d of swarm %d through %s %s, held by %v", pe.port, swarm, pe.via, pr.relative(pe.at), pe.holders)
		}
	}
	return fmt.Sprint(port)
}

// waitWhole waits for the heal to converge and returns how long it took.
func (pr *probe) waitWhole(within time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		pr.mu.Lock()
		heal, whole := pr.healAt, pr.whole
		pr.mu.Unlock()
		if heal.IsZero() {
			return whole, nil
		}
		time.Sleep(probeRound)
	}
	n, sample := pr.missingEverywhere(false)
	return 0, fmt.Errorf("answers not whole %s after the heal: %d expected peers still missing, e.g. %v", within, n, sample)
}

// lost counts the peers whose announce was answered but that no serving
// node shows at the end: uncertain ones (through a killed node, out of
// inFlight such peers) and any other, which would be a bug.
func (pr *probe) lost() (uncertain, inFlight, other int) {
	serving := pr.servingNodes()
	pr.mu.Lock()
	peers := slices.Clone(pr.peers)
	pr.mu.Unlock()
	seen := map[[2]int]bool{}
	for _, p := range serving {
		for sw := range probeSwarms {
			ports, err := pr.ask(p, sw, uint16(readerPort+p.idx), 1, false)
			if err != nil {
				continue
			}
			for port := range ports {
				seen[[2]int{sw, int(port)}] = true
			}
		}
	}
	for _, pe := range peers {
		if pe.uncertain {
			inFlight++
		}
		if seen[[2]int{pe.swarm, int(pe.port)}] {
			continue
		}
		if pe.uncertain {
			uncertain++
		} else {
			other++
		}
	}
	return uncertain, inFlight, other
}

// halt stops the probe and returns its findings.
func (pr *probe) halt() probeResult {
	close(pr.stop)
	pr.done.Wait()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	slices.Sort(pr.latency)
	var p50, p99, worst time.Duration
	if n := len(pr.latency); n > 0 {
		p50, p99, worst = pr.latency[n/2], pr.latency[n*99/100], pr.latency[n-1]
	}
	return probeResult{p50: p50, p99: p99, slowest: worst, answers: pr.answers, fails: pr.fails, late: pr.late, worst: pr.worst, samples: slices.Clone(pr.samples), errs: slices.Clone(pr.errs), peers: len(pr.peers)}
}

type probeResult struct {
	p50, p99, slowest     time.Duration
	answers, fails, peers int
	late                  int
	worst                 moment
	samples               []moment
	errs                  []string
}

func (r probeResult) String() string {
	s := fmt.Sprintf("%d answers checked (latency p50 %s, p99 %s, max %s), %d peers announced, %d answers missing an expected peer",
		r.answers, r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond), r.slowest.Round(time.Millisecond), r.peers, r.fails)
	if r.fails > 0 {
		s += fmt.Sprintf(" (%d of them in answers slower than read_timeout)", r.late)
		s += fmt.Sprintf("; worst %s; first %v", r.worst, r.samples)
	}
	if len(r.errs) > 0 {
		s += fmt.Sprintf("; %d requests unanswered, e.g. %s", len(r.errs), strings.Join(r.errs[:min(3, len(r.errs))], "; "))
	}
	return s
}

// udpClient speaks BEP 15 to one node from the client namespace.
type udpClient struct {
	addr   string
	l      *lab
	mu     sync.Mutex
	conn   *net.UDPConn
	connID uint64
	idAt   time.Time
}

const udpProtocolID = 0x41727101980

func (c *udpClient) open() error {
	if c.conn != nil {
		return nil
	}
	raddr, err := net.ResolveUDPAddr("udp4", c.addr)
	if err != nil {
		return err
	}
	return c.l.inClientNS(func() error {
		c.conn, err = net.DialUDP("udp4", nil, raddr)
		return err
	})
}

// roundTrip sends req and returns the answer with the same transaction id,
// trying three times.
func (c *udpClient) roundTrip(req []byte, tid uint32) ([]byte, error) {
	buf := make([]byte, 2048)
	var last error
	for range 3 {
		if _, err := c.conn.Write(req); err != nil {
			return nil, err
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := c.conn.Read(buf)
			if err != nil {
				last = err
				break
			}
			if n >= 8 && binary.BigEndian.Uint32(buf[4:8]) == tid {
				return buf[:n], nil
			}
		}
	}
	return nil, fmt.Errorf("udp %s: no answer: %w", c.addr, last)
}

func (c *udpClient) announce(ih bittorrent.InfoHash, port uint16, left int64) (map[uint16]bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.open(); err != nil {
		return nil, err
	}
	if c.connID == 0 || time.Since(c.idAt) > 30*time.Second {
		tid := randU32()
		req := binary.BigEndian.AppendUint64(nil, udpProtocolID)
		req = binary.BigEndian.AppendUint32(req, 0)
		req = binary.BigEndian.AppendUint32(req, tid)
		resp, err := c.roundTrip(req, tid)
		if err != nil {
			return nil, err
		}
		if len(resp) < 16 || binary.BigEndian.Uint32(resp) != 0 {
			return nil, fmt.Errorf("udp %s: bad connect answer %x", c.addr, resp)
		}
		c.connID, c.idAt = binary.BigEndian.Uint64(resp[8:]), time.Now()
	}
	tid := randU32()
	id := peerID(port)
	req := binary.BigEndian.AppendUint64(nil, c.connID)
	req = binary.BigEndian.AppendUint32(req, 1)
	req = binary.BigEndian.AppendUint32(req, tid)
	req = append(req, ih[:]...)
	req = append(req, id[:]...)
	req = binary.BigEndian.AppendUint64(req, 0)            // downloaded
	req = binary.BigEndian.AppendUint64(req, uint64(left)) // left
	req = binary.BigEndian.AppendUint64(req, 0)            // uploaded
	req = binary.BigEndian.AppendUint32(req, 0)            // event
	req = binary.BigEndian.AppendUint32(req, 0)            // ip
	req = binary.BigEndian.AppendUint32(req, randU32())    // key
	req = binary.BigEndian.AppendUint32(req, 200)          // numwant
	req = binary.BigEndian.AppendUint16(req, port)
	resp, err := c.roundTrip(req, tid)
	if err != nil {
		return nil, err
	}
	switch action := binary.BigEndian.Uint32(resp); {
	case action == 3:
		c.connID = 0 // perhaps expired: connect again next time
		return nil, fmt.Errorf("udp %s: error %q", c.addr, resp[8:])
	case action != 1 || len(resp) < 20:
		return nil, fmt.Errorf("udp %s: bad announce answer %x", c.addr, resp)
	}
	return compactPorts(resp[20:]), nil
}

func randU32() uint32 { return rand.Uint32() }
