package udp

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	with := func(f func(*Config)) Config {
		c := DefaultConfig()
		f(&c)
		return c
	}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // prefix of the error; empty for none
	}{
		{"default", DefaultConfig(), ""},
		{"disabled", with(func(c *Config) { c.Addr = "" }), ""},
		{"dual stack", with(func(c *Config) { c.Addr = "[::]:6969" }), ""},
		{"port 0", with(func(c *Config) { c.Addr = "127.0.0.1:0" }), ""},
		{"keys", with(func(c *Config) { c.ConnectionIDKeys = []string{"0123456789abcdef", "fedcba9876543210xyz"} }), ""},
		{"readers and batch", with(func(c *Config) { c.Readers, c.BatchSize = 8, 1 }), ""},
		{"no port", with(func(c *Config) { c.Addr = "127.0.0.1" }), `addr: "127.0.0.1" is not host:port`},
		{"bad port", with(func(c *Config) { c.Addr = ":70000" }), `addr: port "70000" in ":70000" is not a number from 0 to 65535`},
		{"short key", with(func(c *Config) { c.ConnectionIDKeys = []string{"0123456789abcdef", "short"} }),
			"connection_id_keys[1]: key is 5 bytes, want at least 16"},
		{"negative readers", with(func(c *Config) { c.Readers = -1 }), "readers: -1 is out of range; want 0 (one per CPU) to 256"},
		{"too many readers", with(func(c *Config) { c.Readers = 257 }), "readers: 257 is out of range"},
		{"kernel's receive buffer", with(func(c *Config) { c.ReceiveBuffer = 0 }), ""},
		{"tiny receive buffer", with(func(c *Config) { c.ReceiveBuffer = 4096 }),
			"receive_buffer: 4096 is out of range; want 0 (the kernel's default) or 65536 to 1073741824 bytes"},
		{"huge receive buffer", with(func(c *Config) { c.ReceiveBuffer = 1 << 31 }), "receive_buffer: 2147483648 is out of range"},
		{"zero batch", with(func(c *Config) { c.BatchSize = 0 }), "batch_size: 0 is out of range; want 1 to 1024"},
		{"huge batch", with(func(c *Config) { c.BatchSize = 1025 }), "batch_size: 1025 is out of range"},
		{"no connect limit", with(func(c *Config) { c.ConnectRate, c.ConnectBurst, c.ConnectSources = 0, 0, 0 }), ""},
		{"slow connects", with(func(c *Config) { c.ConnectRate, c.ConnectBurst = 0.5, 1 }), ""},
		{"negative connect rate", with(func(c *Config) { c.ConnectRate = -1 }),
			"connect_rate: -1 is out of range; want 0 (no limit) or 0.01 to 1000000 connects a second"},
		{"zero connect burst", with(func(c *Config) { c.ConnectBurst = 0 }), "connect_burst: 0 is out of range; want 1 to 1000000"},
		{"few connect sources", with(func(c *Config) { c.ConnectSources = 15 }), "connect_sources: 15 is out of range; want 16 to 1048576"},
		{"many connect sources", with(func(c *Config) { c.ConnectSources = 1<<20 + 1 }), "connect_sources: 1048577 is out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.wantErr)):
				t.Errorf("Validate() = %v, want an error starting %q", err, tt.wantErr)
			}
		})
	}
}

// TestConfigValidateHidesKeys checks that a bad key is never echoed: keys
// are secrets and errors end up in logs.
func TestConfigValidateHidesKeys(t *testing.T) {
	c := DefaultConfig()
	c.ConnectionIDKeys = []string{"s3cr3t"}
	if err := c.Validate(); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("Validate() = %v; want an error without the key", err)
	}
}
