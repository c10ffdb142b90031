// Package bad reads the wall clock for arithmetic in each way that
// TestDurationsIgnoreTheWallClock must catch.
package bad

import "time"

func reads(t time.Time) int64 {
	a := t.Unix() + t.UnixNano() + t.UnixMilli() + t.UnixMicro()
	b := time.Unix(a, 0)
	c := t.Round(0).Sub(b.Truncate(0))
	return int64(c)
}
