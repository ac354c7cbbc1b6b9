package cluster

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/ring"
)

// TestHandoffPlan runs the scripts in testdata/handoff against the pure
// handoff planner, the way etcd-io/raft tests its core: each script builds
// views and swarms, runs passes at given times with given sends failing,
// and states what every pass must send, drop and keep. A script is blocks
// separated by blank lines; each block is a command, a line "----" and the
// output it must produce. Lines starting with # are comments.
//
//	view NAME self=NODE replicas=N members=NODE/BOOT,...
//	    a view as node self sees it (self need not be a member: a node
//	    leaving is in no view of its own)
//	swarm NAME VIEW=OWNER,OWNER ...
//	    a swarm whose owners, primary first, are those in each view named;
//	    the harness searches for an infohash that places so
//	hold NAME ...
//	    the node's store holds these swarms
//	pass VIEW now=DURATION [fail=NODE,...]
//	    one pass over VIEW at DURATION after the script's epoch; sends to
//	    the nodes in fail fail. Prints "send SWARM -> NODE ...", "drop
//	    SWARM", "pending SWARM since DURATION" and the baseline after it.
//
// Dropped swarms leave the store, as handoffPass drops them.
func TestHandoffPlan(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "handoff", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scripts in testdata/handoff")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runHandoffScript(t, f) })
	}
}

// planScript is the state of one script: the views and swarms it named,
// what the store holds and the planner's state between passes.
type planScript struct {
	t        *testing.T
	views    map[string]*ring.View
	swarms   map[string]bittorrent.InfoHash
	names    map[bittorrent.InfoHash]string
	held     map[bittorrent.InfoHash]bool
	state    handoffState
	epoch    time.Time
	viewNext uint64
}

func runHandoffScript(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := &planScript{t: t, views: map[string]*ring.View{}, swarms: map[string]bittorrent.InfoHash{},
		names: map[bittorrent.InfoHash]string{}, held: map[bittorrent.InfoHash]bool{},
		epoch: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	sc := bufio.NewScanner(f)
	line := 0
	for {
		cmd, want, at, ok := nextBlock(t, sc, &line)
		if !ok {
			break
		}
		got := s.run(cmd, at)
		if got != want {
			t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", path, at, cmd, got, want)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// nextBlock reads a command, the "----" line and the expected output up
// to a blank line or the end.
func nextBlock(t *testing.T, sc *bufio.Scanner, line *int) (cmd, want string, at int, ok bool) {
	t.Helper()
	var out []string
	state := 0 // 0 before the command, 1 before ----, 2 in the output
	for sc.Scan() {
		*line++
		l := strings.TrimRight(sc.Text(), " \t")
		switch {
		case strings.HasPrefix(l, "#"):
			continue
		case state == 0 && l == "":
			continue
		case state == 0:
			cmd, at, state = l, *line, 1
		case state == 1 && l == "----":
			state = 2
		case state == 1:
			t.Fatalf("line %d: want ---- after %q, got %q", *line, cmd, l)
		case l == "":
			return cmd, strings.Join(out, "\n"), at, true
		default:
			out = append(out, l)
		}
	}
	if state == 1 {
		t.Fatalf("line %d: %q has no ---- line", *line, cmd)
	}
	return cmd, strings.Join(out, "\n"), at, state == 2
}

// args splits "k=v" fields; a field without = is positional.
func args(fields []string) (pos []string, kv map[string]string) {
	kv = map[string]string{}
	for _, f := range fields {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, f)
		}
	}
	return pos, kv
}

func (s *planScript) run(cmd string, at int) string {
	t := s.t
	fields := strings.Fields(cmd)
	pos, kv := args(fields[1:])
	switch fields[0] {
	case "view":
		if len(pos) != 1 {
			t.Fatalf("line %d: view wants one name", at)
		}
		var nodes []ring.NodeInfo
		for _, m := range strings.Split(kv["members"], ",") {
			if m == "" {
				continue
			}
			name, boot, _ := strings.Cut(m, "/")
			nodes = append(nodes, ring.NodeInfo{Member: ring.Member{Name: name, Datacenter: "dc1", Zone: name}, DataAddr: name, Boot: boot})
		}
		var replicas int
		if _, err := fmt.Sscan(kv["replicas"], &replicas); err != nil {
			t.Fatalf("line %d: replicas: %v", at, err)
		}
		s.viewNext++
		v, err := ring.NewView(nodes, kv["self"], replicas, ring.Options{VNodes: 64}, s.viewNext)
		if err != nil {
			t.Fatalf("line %d: %v", at, err)
		}
		s.views[pos[0]] = v
		return ""
	case "swarm":
		if len(pos) != 1 {
			t.Fatalf("line %d: swarm wants one name", at)
		}
		s.swarms[pos[0]] = s.place(at, kv)
		s.names[s.swarms[pos[0]]] = pos[0]
		return ""
	case "hold":
		for _, name := range pos {
			ih, ok := s.swarms[name]
			if !ok {
				t.Fatalf("line %d: unknown swarm %q", at, name)
			}
			s.held[ih] = true
		}
		return ""
	case "pass":
		return s.pass(at, pos, kv)
	}
	t.Fatalf("line %d: unknown command %q", at, fields[0])
	return ""
}

// place finds an infohash whose owners in each named view are as listed.
func (s *planScript) place(at int, want map[string]string) bittorrent.InfoHash {
	for i := range 1 << 20 {
		ih := bittorrent.InfoHash{byte(i), byte(i >> 8), byte(i >> 16), 'p', 'l', 'a', 'n'}
		if _, used := s.names[ih]; used {
			continue
		}
		fits := true
		for name, owners := range want {
			v := s.view(at, name)
			if s.ownerNames(v, v.OwnersOf(ih, nil)) != owners {
				fits = false
				break
			}
		}
		if fits {
			return ih
		}
	}
	s.t.Fatalf("line %d: no infohash places as %v", at, want)
	return bittorrent.InfoHash{}
}

func (s *planScript) view(at int, name string) *ring.View {
	v, ok := s.views[name]
	if !ok {
		s.t.Fatalf("line %d: unknown view %q", at, name)
	}
	return v
}

func (s *planScript) ownerNames(v *ring.View, idx []int) string {
	names := make([]string, len(idx))
	for i, o := range idx {
		names[i] = v.Members()[o].Name
	}
	return strings.Join(names, ",")
}

func (s *planScript) viewName(v *ring.View) string {
	if v == nil {
		return "none"
	}
	for name, w := range s.views {
		if w == v {
			return name
		}
	}
	return "unnamed"
}

// pass plans one pass and carries it out as handoffPass does, with the
// sends to the nodes in fail failing.
func (s *planScript) pass(at int, pos []string, kv map[string]string) string {
	if len(pos) != 1 {
		s.t.Fatalf("line %d: pass wants one view", at)
	}
	v := s.view(at, pos[0])
	d, err := time.ParseDuration(kv["now"])
	if err != nil {
		s.t.Fatalf("line %d: now: %v", at, err)
	}
	fail := map[string]bool{}
	for _, n := range strings.Split(kv["fail"], ",") {
		fail[n] = n != ""
	}
	held := make([]bittorrent.InfoHash, 0, len(s.held))
	for ih := range s.held {
		held = append(held, ih)
	}
	slices.SortFunc(held, func(a, b bittorrent.InfoHash) int { return strings.Compare(s.names[a], s.names[b]) })

	var out []string
	p := newHandoffPlan(s.state, v, s.epoch.Add(d))
	failed := map[bittorrent.InfoHash]bool{}
	for _, ih := range held {
		m := p.swarm(ih)
		if len(m.to) > 0 {
			out = append(out, fmt.Sprintf("send %s -> %s", s.names[ih], strings.ReplaceAll(s.ownerNames(v, m.to), ",", " ")))
		}
		for _, o := range m.to {
			if fail[v.Members()[o].Name] {
				failed[ih] = true
			}
		}
		p.record(m)
	}
	drop, next, settled := p.finish(failed)
	for _, ih := range drop {
		out = append(out, "drop "+s.names[ih])
		delete(s.held, ih)
	}
	var pending []string
	for ih, since := range next.pending {
		pending = append(pending, fmt.Sprintf("pending %s since %s", s.names[ih], since.Sub(s.epoch)))
	}
	slices.Sort(pending)
	out = append(out, pending...)
	if settled {
		out = append(out, "settled: baseline "+s.viewName(next.baseline))
	} else {
		out = append(out, "unsettled: baseline "+s.viewName(next.baseline))
	}
	s.state = next
	return strings.Join(out, "\n")
}
