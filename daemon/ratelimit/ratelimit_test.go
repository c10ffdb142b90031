package ratelimit

import (
	"testing"
	"time"
)

func TestPerClientBucket(t *testing.T) {
	l := New(Config{Rate: 2, Burst: 3})
	now := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _, _ := l.Allow(now, "a"); !ok {
			t.Fatalf("request %d within burst refused", i)
		}
	}
	ok, wait, scope := l.Allow(now, "a")
	if ok || scope != ScopeClient {
		t.Fatalf("Allow after burst = %v, %s, want refused by client bucket", ok, scope)
	}
	if wait != 500*time.Millisecond {
		t.Errorf("retry after %s, want 500ms at 2/s", wait)
	}
	if ok, _, _ := l.Allow(now, "b"); !ok {
		t.Error("another client refused: buckets must be per client")
	}
	if ok, _, _ := l.Allow(now.Add(500*time.Millisecond), "a"); !ok {
		t.Error("refused after the bucket refilled")
	}
}

func TestGlobalBucket(t *testing.T) {
	l := New(Config{GlobalRate: 1, GlobalBurst: 2})
	now := time.Unix(1000, 0)
	l.Allow(now, "a")
	l.Allow(now, "b")
	ok, wait, scope := l.Allow(now, "c")
	if ok || scope != ScopeGlobal || wait != time.Second {
		t.Fatalf("Allow = %v, %s, %s; want refused by the global bucket, retry after 1s", ok, wait, scope)
	}
}

func TestRefusalByGlobalReturnsClientToken(t *testing.T) {
	l := New(Config{Rate: 1, Burst: 1, GlobalRate: 1, GlobalBurst: 1})
	now := time.Unix(1000, 0)
	l.Allow(now, "a")
	if ok, _, scope := l.Allow(now, "b"); ok || scope != ScopeGlobal {
		t.Fatalf("b should be refused by the global bucket, got %v %s", ok, scope)
	}
	// b's own bucket was not charged for the refused request.
	if ok, _, scope := l.Allow(now.Add(time.Second), "b"); !ok {
		t.Fatalf("b refused by %s after the global bucket refilled", scope)
	}
}

func TestZeroRateIsOff(t *testing.T) {
	l := New(Config{})
	for range 1000 {
		if ok, _, _ := l.Allow(time.Unix(1000, 0), "a"); !ok {
			t.Fatal("refused with limits off")
		}
	}
}

func TestIdleClientsForgotten(t *testing.T) {
	l := New(Config{Rate: 1, Burst: 1})
	now := time.Unix(1000, 0)
	for i := range 100 {
		l.Allow(now, string(rune('a'+i)))
	}
	l.Allow(now.Add(idleAfter+2*time.Minute), "z0")
	if n := l.Clients(); n != 1 {
		t.Fatalf("Clients() = %d after the others went idle, want 1", n)
	}
}
