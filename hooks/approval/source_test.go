package approval

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/karuta-tracker/karuta/hooks/bittorrent"
	"github.com/karuta-tracker/karuta/hooks/eventually"
)

// writeFile replaces path's contents by renaming a new file over it, as
// operators are told to do.
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func announceOK(h *Torrent, ih bittorrent.InfoHash) bool {
	return h.HandleAnnounce(context.Background(), &bittorrent.AnnounceRequest{InfoHash: ih}, &bittorrent.AnnounceResponse{}) == nil
}

func clientOK(h *Client, id string) bool {
	return h.HandleAnnounce(context.Background(), &bittorrent.AnnounceRequest{PeerID: pid(id)}, &bittorrent.AnnounceResponse{}) == nil
}

var (
	hashA = strings.Repeat("a", 40)
	hashB = strings.Repeat("b", 40)
	hashC = strings.Repeat("c", 64)
)

func TestApprovalFileSyntax(t *testing.T) {
	path := filepath.Join(t.TempDir(), "torrents")
	writeFile(t, path, "# approved torrents\n\n  "+hashA+"  # ubuntu\n\t"+hashC+"\r\n#"+hashB+"\n")
	h, err := NewTorrent(TorrentConfig{Mode: Allow, File: path}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for s, want := range map[string]bool{hashA: true, hashC: true, hashB: false} {
		if got := announceOK(h, mustHash(s)); got != want {
			t.Errorf("%s approved = %v, want %v", s[:8], got, want)
		}
	}
}

func TestApprovalLoadErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		file string // contents; "-" for no file
		mode Mode
		want string
	}{
		{"missing file", "-", Deny, "file " + filepath.Join(dir, "missing file") + ": no such file or directory"},
		{"bad line", hashA + "\n\n# c\nzz\n", Deny, `file ` + filepath.Join(dir, "bad line") + `: line 4: "zz" is not a 40- or 64-character hex infohash`},
		{"empty allow", "# nothing yet\n", Allow, "file " + filepath.Join(dir, "empty allow") + ": no entries; allow mode would refuse everything"},
		{"long line", strings.Repeat("a", 70000), Deny, "line 1: bufio.Scanner: token too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name)
			if tt.file != "-" {
				writeFile(t, path, tt.file)
			}
			_, err := NewTorrent(TorrentConfig{Mode: tt.mode, File: path}, zaptest.NewLogger(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewTorrent = %v, want error containing %q", err, tt.want)
			}
		})
	}
	// Deny mode with an empty file is fine: it refuses nothing.
	path := filepath.Join(dir, "empty deny")
	writeFile(t, path, "")
	h, err := NewTorrent(TorrentConfig{Mode: Deny, File: path}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("empty deny file: %v", err)
	}
	_ = h.Close()
}

func TestApprovalReloadKeepsOldListOnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clients")
	writeFile(t, path, "-qB4650-\n")
	h, err := NewClient(ClientConfig{Mode: Allow, File: path, List: []string{"-TR"}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	steps := []struct {
		file    string // "-" to delete it
		wantErr string
		allowed map[string]bool
	}{
		{"-UT3550-\n", "", map[string]bool{"-UT3550-": true, "-qB4650-": false, "-TR4000-": true}},
		{"-qB4650-\n-q B\n", `client_approval: file ` + path + `: line 2: "-q B": byte 2 (0x20) must be written as %20`,
			map[string]bool{"-UT3550-": true, "-qB4650-": false, "-TR4000-": true}},
		{"-", "no such file or directory", map[string]bool{"-UT3550-": true, "-TR4000-": true}},
		{"", "", map[string]bool{"-UT3550-": false, "-TR4000-": true}}, // the inline list keeps allow mode non-empty
		{"-qB\n", "", map[string]bool{"-qB4650-": true, "-qB5000-": true, "-UT3550-": false}},
	}
	for i, s := range steps {
		if s.file == "-" {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		} else {
			writeFile(t, path, s.file)
		}
		err := h.Reload()
		if s.wantErr == "" && err != nil || s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)) {
			t.Fatalf("step %d: Reload() = %v, want error %q", i, err, s.wantErr)
		}
		for id, want := range s.allowed {
			if got := clientOK(h, id); got != want {
				t.Errorf("step %d: %s allowed = %v, want %v", i, id, got, want)
			}
		}
	}
}

func TestApprovalReloadWithoutFile(t *testing.T) {
	h, err := NewTorrent(TorrentConfig{Mode: Deny, List: []string{hashA}}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err != nil {
		t.Errorf("Reload with no file = %v", err)
	}
	if err := h.Close(); err != nil {
		t.Error(err)
	}
}

// On synctest's fake clock, so the ticks during which nothing may change
// pass in no wall time and cannot be missed on a loaded machine.
func TestApprovalWatcherPicksUpChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "torrents")
		writeFile(t, path, hashA+"\n")
		h, err := NewTorrent(TorrentConfig{Mode: Allow, File: path, CheckInterval: 10 * time.Millisecond}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		a, b := mustHash(hashA), mustHash(hashB)
		if !announceOK(h, a) || announceOK(h, b) {
			t.Fatal("initial list not in force")
		}

		writeFile(t, path, hashB+"\n") // renamed over: same size, new file
		eventually.True(t, 5*time.Second, "renamed-over file picked up", func() bool { return announceOK(h, b) && !announceOK(h, a) })

		writeFile(t, path, "garbage\n")
		time.Sleep(50 * time.Millisecond) // fake: several ticks; the bad file must not replace the list
		if !announceOK(h, b) || announceOK(h, a) {
			t.Fatal("a bad file replaced the list")
		}

		// Written in place rather than renamed: size and mtime change.
		if err := os.WriteFile(path, []byte(hashA+"\n"+hashB+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		eventually.True(t, 5*time.Second, "file written in place picked up", func() bool { return announceOK(h, a) && announceOK(h, b) })

		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // fake: several ticks
		if !announceOK(h, a) {
			t.Fatal("a missing file replaced the list")
		}
		writeFile(t, path, hashB+"\n")
		eventually.True(t, 5*time.Second, "file recreated", func() bool { return !announceOK(h, a) && announceOK(h, b) })

		if err := h.Close(); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(); err != nil {
			t.Fatal("second Close:", err)
		}
		writeFile(t, path, hashA+"\n")
		time.Sleep(50 * time.Millisecond) // fake: several ticks
		if announceOK(h, a) {
			t.Error("the watcher still reloads after Close")
		}
	})
}

// TestConcurrentLookupsAndReloads is for -race: lookups run while the
// watcher and Reload swap lists.
func TestApprovalConcurrentLookupsAndReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "torrents")
	writeFile(t, path, hashA+"\n")
	h, err := NewTorrent(TorrentConfig{Mode: Deny, File: path, CheckInterval: 10 * time.Millisecond}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			req := bittorrent.ScrapeRequest{InfoHashes: []bittorrent.InfoHash{mustHash(hashA), mustHash(hashB)}}
			for ctx.Err() == nil {
				_ = h.HandleScrape(ctx, &req, &bittorrent.ScrapeResponse{})
			}
		})
	}
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			writeFile(t, path, []string{hashA, hashB, hashA + "\n" + hashB}[i%3]+"\n")
			if err := h.Reload(); err != nil {
				t.Errorf("Reload: %v", err)
				return
			}
		}
	})
	wg.Wait()
}
