package bench

import (
	"strings"
	"testing"
	"time"
)

func TestArrivals(t *testing.T) {
	constant := Options{Rate: 10, Duration: time.Second}.Arrivals()
	if len(constant) != 10 || constant[0] != 100*time.Millisecond || constant[9] != time.Second {
		t.Fatalf("constant 10/s for 1s: %v", constant)
	}
	p := Options{Rate: 100, Poisson: true, Seed: 7, Duration: 100 * time.Second}.Arrivals()
	if n := len(p); n < 9500 || n > 10500 {
		t.Fatalf("Poisson 100/s for 100s: %d arrivals, want about 10,000", n)
	}
	again := Options{Rate: 100, Poisson: true, Seed: 7, Duration: 100 * time.Second}.Arrivals()
	if again[500] != p[500] {
		t.Fatal("the same seed gave different arrivals")
	}
	// Bursts: 1 s at 10/s, then 4 s of silence, over 10 s.
	b := Options{Rate: 10, BurstOn: time.Second, BurstOff: 4 * time.Second, Duration: 10 * time.Second}.Arrivals()
	if len(b) != 20 {
		t.Fatalf("bursts: %d arrivals, want 20 (two on-phases of 10)", len(b))
	}
	for _, at := range b {
		if phase := at % (5 * time.Second); phase > time.Second {
			t.Fatalf("arrival at %s falls in an off-phase", at)
		}
	}
	if n := len(Options{Rate: 1000, Requests: 7}.Arrivals()); n != 7 {
		t.Fatalf("Requests 7: %d arrivals", n)
	}
}

func TestParseTrace(t *testing.T) {
	tr, err := ParseTrace(strings.NewReader("time,prompt\n# a comment\n0\n0.5,x\n\n2.25\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr) != 3 || tr[1] != 500*time.Millisecond || tr[2] != 2250*time.Millisecond {
		t.Fatalf("ParseTrace = %v", tr)
	}
	for _, bad := range []string{"", "1\n0.5\n", "0\nx\n", "-1\n"} {
		if _, err := ParseTrace(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseTrace(%q): want an error", bad)
		}
	}
}

func TestCheckLag(t *testing.T) {
	if c := CheckLag(100, 100, 1100, 1095); !c.Valid || c.LateSteps != 5 {
		t.Errorf("5 late of 1000: %+v, want valid", c)
	}
	if c := CheckLag(0, 0, 1000, 900); c.Valid {
		t.Errorf("100 late of 1000: %+v, want invalid", c)
	}
}
