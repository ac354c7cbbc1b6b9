package bittorrent

import "testing"

func TestParamsGet(t *testing.T) {
	p := Params{
		Query: "a=1&token=x%2Fy&b&c%5F=z&bad=%zz",
		Route: []Param{{Key: "passkey", Value: "abc"}, {Key: "a", Value: "route"}},
	}
	tests := []struct {
		key    string
		want   string
		wantOK bool
	}{
		{"passkey", "abc", true},
		{"a", "route", true}, // route parameters win over the query
		{"token", "x/y", true},
		{"b", "", true},
		{"c_", "z", true},
		{"bad", "", false},
		{"missing", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			got, ok := p.Get(tt.key)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Get(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestParseInfoHash(t *testing.T) {
	v1 := "0123456789abcdef0123456789abcdef01234567"
	v2 := v1 + "89abcdef0123456789abcdef"
	for _, s := range []string{v1, v2} {
		ih, err := ParseInfoHash(s)
		if err != nil {
			t.Fatalf("ParseInfoHash(%q): %v", s, err)
		}
		if ih.String() != v1 {
			t.Errorf("ParseInfoHash(%q) = %s, want %s", s, ih, v1)
		}
	}
	for _, s := range []string{"", "abc", v1[:39] + "g", v2[:63] + "x"} {
		if _, err := ParseInfoHash(s); err == nil {
			t.Errorf("ParseInfoHash(%q) succeeded, want error", s)
		}
	}
}

func TestFailureReason(t *testing.T) {
	if got := FailureReason(ErrBadPort); got != string(ErrBadPort) {
		t.Errorf("FailureReason(ErrBadPort) = %q", got)
	}
	if got := FailureReason(errInternalForTest{}); got != string(ErrInternal) {
		t.Errorf("FailureReason(internal) = %q, want generic", got)
	}
}

type errInternalForTest struct{}

func (errInternalForTest) Error() string { return "store: shard 3 corrupted" }
