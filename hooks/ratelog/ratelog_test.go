package ratelog

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	r := New(10 * time.Second)
	t0 := time.Unix(1000, 0)
	if n, ok := r.AllowAt(t0); !ok || n != 1 {
		t.Fatalf("first event: %d, %v; want 1, true", n, ok)
	}
	for i := range 5 {
		if _, ok := r.AllowAt(t0.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("event %d within the period was allowed", i)
		}
	}
	if n, ok := r.AllowAt(t0.Add(11 * time.Second)); !ok || n != 6 {
		t.Fatalf("after the period: %d, %v; want 6, true", n, ok)
	}
}

func TestKeyed(t *testing.T) {
	k := NewKeyed(10*time.Second, 4)
	t0 := time.Unix(1000, 0)
	for _, kind := range []string{"a", "b"} {
		if n, ok := k.AllowAt(kind, t0); !ok || n != 1 {
			t.Fatalf("first %q: %d, %v; want 1, true", kind, n, ok)
		}
	}
	if _, ok := k.AllowAt("a", t0.Add(time.Second)); ok {
		t.Fatal("a second \"a\" within the period was allowed")
	}
	if n, ok := k.AllowAt("a", t0.Add(11*time.Second)); !ok || n != 2 {
		t.Fatalf("\"a\" after the period: %d, %v; want 2, true", n, ok)
	}
	// Past maxKinds the kinds are forgotten, so memory stays bounded and
	// a forgotten kind logs again at once.
	for i := range 10 {
		k.AllowAt(fmt.Sprint("kind", i), t0)
	}
	if len(k.kinds) > 4 {
		t.Fatalf("%d kinds remembered, want at most 4", len(k.kinds))
	}
}
