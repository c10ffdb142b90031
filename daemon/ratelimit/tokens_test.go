package ratelimit

import (
	"testing"
	"time"
)

// A key's tokens per minute: requests take their tokens until the bucket
// is short, the refusal says when it will hold enough, unused tokens come
// back, and buckets are per key.
func TestTokensPerMinute(t *testing.T) {
	l := NewTokens()
	now := time.Unix(1000, 0)
	const tpm = 6000 // 100 a second
	for i := range 3 {
		if ok, _ := l.Take(now, "a", tpm, 2000); !ok {
			t.Fatalf("request %d of 2000 tokens within 6000 refused", i)
		}
	}
	ok, wait := l.Take(now, "a", tpm, 400)
	if ok || wait != 4*time.Second {
		t.Fatalf("Take(400) from an empty bucket = %v, retry after %s; want refused, 4s at 100 tokens/s", ok, wait)
	}
	if ok, _ := l.Take(now, "b", tpm, 400); !ok {
		t.Fatal("another key refused: buckets must be per key")
	}
	// One request used 500 of its 2000: 1500 come back.
	l.Return(now, "a", tpm, 1500)
	if ok, _ := l.Take(now, "a", tpm, 1500); !ok {
		t.Fatal("refused after 1500 tokens were returned")
	}
	if ok, _ := l.Take(now.Add(4*time.Second), "a", tpm, 400); !ok {
		t.Fatal("refused after the bucket refilled for 4 s")
	}
	// A request that used 300 more than it was charged takes them.
	l.Return(now.Add(4*time.Second), "a", tpm, -300)
	if ok, wait := l.Take(now.Add(4*time.Second), "a", tpm, 100); ok || wait != 4*time.Second {
		t.Fatalf("Take(100) after 300 more were taken = %v, %s; want refused, 4s", ok, wait)
	}
	// No limit: always allowed, nothing held.
	if ok, _ := l.Take(now, "c", 0, 1<<30); !ok {
		t.Fatal("a key without a limit refused")
	}
	if n := l.Len(); n != 2 {
		t.Errorf("%d buckets, want 2 (the keys with a limit that were seen)", n)
	}
}

// A request larger than the whole bucket passes when the bucket is full,
// and leaves it in debt for as long as it takes to repay: it is never
// refused for ever, and the rate still holds.
func TestTokensRequestLargerThanBucket(t *testing.T) {
	l := NewTokens()
	now := time.Unix(1000, 0)
	if ok, _ := l.Take(now, "a", 600, 1200); !ok {
		t.Fatal("a request larger than the bucket refused with the bucket full")
	}
	ok, wait := l.Take(now, "a", 600, 1200)
	// The bucket is at -600; full again (600) after 1200 tokens at 10/s.
	if ok || wait != 2*time.Minute {
		t.Fatalf("the next = %v, retry after %s; want refused, 2m0s", ok, wait)
	}
	if ok, _ := l.Take(now.Add(2*time.Minute), "a", 600, 1200); !ok {
		t.Fatal("refused with the bucket full again")
	}
}

// A reload that changes a key's limit starts its bucket full at the new
// size; buckets unused for a while are forgotten.
func TestTokensLimitChangedAndSweep(t *testing.T) {
	l := NewTokens()
	now := time.Unix(1000, 0)
	l.Take(now, "a", 100, 100)
	if ok, _ := l.Take(now, "a", 1000, 1000); !ok {
		t.Fatal("the bucket did not start again at its new size")
	}
	later := now.Add(idleAfter + 2*time.Minute)
	l.Take(later, "b", 100, 1)
	if n := l.Len(); n != 1 {
		t.Errorf("%d buckets after a's went unused for %s, want 1", n, idleAfter)
	}
}
