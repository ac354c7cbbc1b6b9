package store_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/store"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// swarmFileFixture fills a store (lifetime 10m, clock at t0) with two
// swarms and returns it with its clock. ih1 has an IPv4 seeder seen at t0,
// and an IPv4 leecher and an IPv6 seeder seen at t0+5m, with two snatches;
// ih2 has one IPv4 leecher seen at t0.
func swarmFileFixture(t testing.TB) (*store.Memory, *clock) {
	t.Helper()
	m, clk, _ := newMemory(t, nil)
	ih1, ih2 := bittorrent.InfoHash{0x11}, bittorrent.InfoHash{0x22}
	m.Apply([]bittorrent.Change{
		{InfoHash: ih1, Peer: peer("10.0.0.1:1001"), Op: bittorrent.OpComplete},
		{InfoHash: ih2, Peer: peer("10.0.0.4:1004"), Op: bittorrent.OpPut},
	})
	clk.set(t0.Add(5 * time.Minute))
	m.Apply([]bittorrent.Change{
		{InfoHash: ih1, Peer: peer("10.0.0.2:1002"), Op: bittorrent.OpPut},
		{InfoHash: ih1, Peer: peer("[2001:db8::3]:1003"), Op: bittorrent.OpComplete},
	})
	clk.set(t0.Add(6 * time.Minute))
	return m, clk
}

func writeSwarms(t testing.TB, m *store.Memory) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := m.WriteSwarms(&buf); err != nil {
		t.Fatalf("WriteSwarms: %v", err)
	}
	return buf.Bytes()
}

// TestSwarmFileRoundTrip writes a store and reads it into a new one later:
// peers keep their last-seen times (they expire when they would have),
// their kind and IDs, snatch counts survive, and expired peers and swarms
// left empty are not loaded.
func TestSwarmFileRoundTrip(t *testing.T) {
	src, _ := swarmFileFixture(t)
	data := writeSwarms(t, src)

	dst, clk, _ := newMemory(t, nil)
	loadAt := t0.Add(10*time.Minute + 30*time.Second) // the peers seen at t0 are past their 10m
	clk.set(loadAt)
	st, err := dst.ReadSwarms(bytes.NewReader(data), loadAt)
	if err != nil {
		t.Fatalf("ReadSwarms: %v", err)
	}
	want := store.SwarmFileStats{Swarms: 1, Peers: 2, Expired: 2, ExpiredSwarms: 1, WrittenAt: t0.Add(6 * time.Minute)}
	if !st.WrittenAt.Equal(want.WrittenAt) {
		t.Errorf("WrittenAt = %v, want %v", st.WrittenAt, want.WrittenAt)
	}
	st.WrittenAt = want.WrittenAt
	if st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	ih1 := bittorrent.InfoHash{0x11}
	if got, want := dst.Counts(ih1), (bittorrent.Counts{Seeders: 1, Leechers: 1, Snatches: 2}); got != want {
		t.Errorf("Counts(ih1) = %+v, want %+v", got, want)
	}
	if got, want := dst.Stats(), (store.Stats{Swarms: 1, Leechers4: 1, Seeders6: 1}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
	snap, _, _ := dst.Swarm(ih1, 0, nil)
	for _, c := range snap {
		if c.Peer.ID != peer("10.0.0.1:1").ID {
			t.Errorf("peer %s has ID %q, want the fixture's", c.Peer.Addr, c.Peer.ID)
		}
	}
	// Seen at t0+5m with a 10m lifetime: still there at t0+15m, gone a second later.
	if n := dst.GC(t0.Add(15 * time.Minute)); n != 0 {
		t.Errorf("GC at t0+15m removed %d peers; loaded peers lost their last-seen time", n)
	}
	if n := dst.GC(t0.Add(15*time.Minute + 2*time.Second)); n != 2 {
		t.Errorf("GC at t0+15m2s removed %d peers, want 2", n)
	}
}

// TestSwarmFileLoadMergesSnatches loads into a store that already has the
// swarm: peers are added and the larger snatch count wins.
func TestSwarmFileLoadMergesSnatches(t *testing.T) {
	src, _ := swarmFileFixture(t)
	data := writeSwarms(t, src)
	dst, clk, _ := newMemory(t, nil)
	clk.set(t0.Add(6 * time.Minute))
	ih1 := bittorrent.InfoHash{0x11}
	dst.Apply([]bittorrent.Change{{InfoHash: ih1, Peer: peer("10.0.0.9:1009"), Op: bittorrent.OpComplete}})
	if _, err := dst.ReadSwarms(bytes.NewReader(data), clk.now()); err != nil {
		t.Fatal(err)
	}
	if got, want := dst.Counts(ih1), (bittorrent.Counts{Seeders: 3, Leechers: 1, Snatches: 2}); got != want {
		t.Errorf("Counts = %+v, want %+v", got, want)
	}
}

// TestSwarmFileGolden pins the file format: a change to it needs a new
// version number.
func TestSwarmFileGolden(t *testing.T) {
	m, clk, _ := newMemory(t, nil)
	ih := bittorrent.InfoHash{0xab, 0xcd}
	m.Apply([]bittorrent.Change{
		{InfoHash: ih, Peer: peer("192.0.2.1:6881"), Op: bittorrent.OpComplete},
		{InfoHash: ih, Peer: peer("[2001:db8::1]:6882"), Op: bittorrent.OpPut},
	})
	clk.set(t0.Add(time.Minute))
	got := writeSwarms(t, m)
	path := filepath.Join("testdata", "swarms_v1.golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("swarm file differs from %s:\ngot  %x\nwant %x", path, got, want)
	}
}

// TestSwarmFileDamaged reads every truncation of a valid file and every
// single-byte corruption of it: each is refused with ErrBadSwarmFile and
// loads nothing.
func TestSwarmFileDamaged(t *testing.T) {
	src, _ := swarmFileFixture(t)
	data := writeSwarms(t, src)
	check := func(t *testing.T, what string, b []byte) {
		t.Helper()
		dst, _, _ := newMemory(t, nil)
		_, err := dst.ReadSwarms(bytes.NewReader(b), t0.Add(6*time.Minute))
		if !errors.Is(err, store.ErrBadSwarmFile) {
			t.Fatalf("%s: err = %v, want ErrBadSwarmFile", what, err)
		}
		if st := dst.Stats(); st != (store.Stats{}) {
			t.Fatalf("%s: loaded %+v from a bad file, want nothing", what, st)
		}
	}
	for n := range len(data) {
		check(t, "truncated to "+strconv.Itoa(n)+" bytes", data[:n])
	}
	for i := range data {
		b := bytes.Clone(data)
		b[i] ^= 0x40
		check(t, "byte "+strconv.Itoa(i)+" flipped", b)
	}
	check(t, "trailing data", append(bytes.Clone(data), 0))

	for _, tc := range []struct {
		name, want string
		edit       func([]byte)
	}{
		{"magic", `starts with "XARUTASW"`, func(b []byte) { b[0] = 'X' }},
		{"version", "version 2; this Karuta reads version 1", func(b []byte) { b[9] = 2 }},
	} {
		b := bytes.Clone(data)
		tc.edit(b)
		dst, _, _ := newMemory(t, nil)
		if _, err := dst.ReadSwarms(bytes.NewReader(b), t0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to say %q", tc.name, err, tc.want)
		}
	}
}

// TestSaveSwarmFile saves through a temporary file and a rename, leaves
// nothing else behind, replaces an older file, and reports a missing
// directory and a missing file clearly.
func TestSaveSwarmFile(t *testing.T) {
	src, _ := swarmFileFixture(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "swarms")
	if err := os.WriteFile(path, []byte("an older file"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := src.SaveSwarmFile(path)
	if err != nil {
		t.Fatalf("SaveSwarmFile: %v", err)
	}
	if st.Swarms != 2 || st.Peers != 4 {
		t.Errorf("saved %+v, want 2 swarms and 4 peers", st)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "swarms" {
		t.Errorf("directory holds %v, want only the swarm file", entries)
	}
	dst, clk, _ := newMemory(t, nil)
	clk.set(t0.Add(6 * time.Minute))
	if st, err := dst.LoadSwarmFile(path); err != nil || st.Peers != 4 {
		t.Errorf("LoadSwarmFile = %+v, %v; want 4 peers", st, err)
	}

	missingDir := filepath.Join(dir, "nope", "swarms")
	if _, err := src.SaveSwarmFile(missingDir); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "nope")) {
		t.Errorf("save into a missing directory: err = %v, want it to name the directory", err)
	}
	if _, err := dst.LoadSwarmFile(filepath.Join(dir, "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("load of a missing file: err = %v, want os.ErrNotExist", err)
	}
}

// TestRemoveSwarmFileTemps removes exactly the temporary files a crashed
// SaveSwarmFile would leave for that path.
func TestRemoveSwarmFileTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "swarms")
	for _, name := range []string{
		"swarms", ".swarms.tmp-1234", ".swarms.tmp-99", // the file and two crashes' leftovers
		".swarms.tmp-", ".swarms.tmp-12x", ".other.tmp-1", "swarms.tmp-1", "swarms.bad-20261207T031500Z", // not ours
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := store.RemoveSwarmFileTemps(path)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{filepath.Join(dir, ".swarms.tmp-1234"), filepath.Join(dir, ".swarms.tmp-99")}; !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	if left, _ := os.ReadDir(dir); len(left) != 6 {
		t.Errorf("%d files left, want the 6 that are not temporary swarm files", len(left))
	}
}

// TestKeepBadSwarmFile keeps a damaged file under the time it was found
// bad, twice in one second too, and deletes the oldest past the bound.
func TestKeepBadSwarmFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "swarms")
	write := func(data string) {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("legacy")
	if err := os.Rename(path, path+".bad"); err != nil { // as older versions kept it
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 7, 3, 15, 0, 0, time.UTC)
	var kept []string
	for i, when := range []time.Time{at, at, at.Add(time.Hour), at.Add(2 * time.Hour)} {
		write(fmt.Sprint("bad ", i))
		name, deleted, err := store.KeepBadSwarmFile(path, when, 3)
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, name)
		if b, _ := os.ReadFile(name); string(b) != fmt.Sprint("bad ", i) {
			t.Errorf("%s holds %q", name, b)
		}
		switch i {
		case 2:
			if !slices.Equal(deleted, []string{path + ".bad"}) {
				t.Errorf("third: deleted %v, want the legacy file", deleted)
			}
		case 3:
			if !slices.Equal(deleted, []string{kept[0]}) {
				t.Errorf("fourth: deleted %v, want the oldest, %s", deleted, kept[0])
			}
		}
	}
	if want := path + ".bad-20261207T031500Z"; kept[0] != want || kept[1] != want+".1" {
		t.Errorf("names %v, want %s and its repeat", kept[:2], want)
	}
	left, _ := filepath.Glob(path + ".bad*")
	slices.Sort(left)
	if want := []string{kept[1], kept[2], kept[3]}; !slices.Equal(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bad file is still at %s: %v", path, err)
	}
}

// FuzzReadSwarms feeds arbitrary bytes to the reader: it must never panic,
// and a file it accepts must write back to one it accepts again with the
// same peers.
func FuzzReadSwarms(f *testing.F) {
	m, _ := swarmFileFixture(f)
	f.Add(writeSwarms(f, m))
	f.Add([]byte("KARUTASW"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dst, clk, _ := newMemory(t, nil)
		now := t0.Add(6 * time.Minute)
		clk.set(now)
		st, err := dst.ReadSwarms(bytes.NewReader(data), now)
		if err != nil {
			if dst.Stats() != (store.Stats{}) {
				t.Fatalf("rejected file (%v) loaded %+v", err, dst.Stats())
			}
			return
		}
		again, _, _ := newMemory(t, nil)
		st2, err := again.ReadSwarms(bytes.NewReader(writeSwarms(t, dst)), now)
		if err != nil {
			t.Fatalf("a re-written accepted file is refused: %v", err)
		}
		if again.Stats() != dst.Stats() {
			t.Fatalf("re-read store %+v, want %+v (first read %+v, second %+v)", again.Stats(), dst.Stats(), st, st2)
		}
	})
}
