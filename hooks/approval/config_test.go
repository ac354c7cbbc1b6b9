package approval

import (
	"strings"
	"testing"
	"time"
)

func TestApprovalValidate(t *testing.T) {
	ih := strings.Repeat("ab", 20)
	tests := []struct {
		name    string
		cfg     Config
		torrent bool
		want    string // error prefix, or "" for valid
	}{
		{"client allow list", Config{Mode: Allow, List: []string{"-qB4650-", "T03I"}}, false, ""},
		{"client deny file", Config{Mode: Deny, File: "/x"}, false, ""},
		{"deny empty", Config{Mode: Deny}, false, ""},
		{"torrent v1 and v2", Config{Mode: Allow, List: []string{ih, ih + strings.Repeat("0", 24)}}, true, ""},
		{"watcher off", Config{Mode: Allow, File: "/x", CheckInterval: 0}, true, ""},
		{"missing mode", Config{List: []string{"-qB"}}, false, "mode: missing; want allow or deny"},
		{"bad mode", Config{Mode: "maybe", List: []string{"-qB"}}, false, `mode: "maybe" is not allowed; want allow or deny`},
		{"allow nothing", Config{Mode: Allow}, false, "list: allow mode with no list and no file"},
		{"allow nothing torrent", Config{Mode: Allow}, true, "list: allow mode with no list and no file"},
		{"bad hash", Config{Mode: Deny, List: []string{ih, ih, ih, "zz"}}, true, `list[3]: "zz" is not a 40- or 64-character hex infohash`},
		{"non-hex hash", Config{Mode: Deny, List: []string{strings.Repeat("g", 40)}}, true, "list[0]: "},
		{"bad prefix", Config{Mode: Deny, List: []string{"-qB", "a b"}}, false, `list[1]: "a b": byte 1 (0x20) must be written as %20`},
		{"long prefix", Config{Mode: Deny, List: []string{strings.Repeat("x", 21)}}, false, "list[0]: "},
		{"interval too short", Config{Mode: Deny, File: "/x", CheckInterval: time.Millisecond}, false, "check_interval: 1ms is out of range"},
		{"interval too long", Config{Mode: Deny, File: "/x", CheckInterval: 25 * time.Hour}, true, "check_interval: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.torrent {
				err = TorrentConfig(tt.cfg).Validate()
			} else {
				err = ClientConfig(tt.cfg).Validate()
			}
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Errorf("Validate() = %v, want an error starting %q", err, tt.want)
			}
		})
	}
}

func TestApprovalDefaults(t *testing.T) {
	c := DefaultClientConfig()
	c.Mode, c.File = Allow, "/x"
	if err := c.Validate(); err != nil {
		t.Errorf("client defaults plus mode and file: %v", err)
	}
	tc := DefaultTorrentConfig()
	tc.Mode = Deny
	if err := tc.Validate(); err != nil {
		t.Errorf("torrent defaults plus mode: %v", err)
	}
	if c.CheckInterval != 10*time.Second {
		t.Errorf("default check_interval = %s, want 10s", c.CheckInterval)
	}
}
