package queue

// A client's own deadline (Request.Deadline): admission against it, and
// earliest deadline first within a class.

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// Queued requests of a class are served earliest deadline first: a
// request due sooner goes ahead of those queued before it; one with no
// objective at all (batch work without a deadline) behind those with one.
func TestEarliestDeadlineFirst(t *testing.T) {
	for _, class := range []Class{Interactive, Batch} {
		t.Run(class.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := cfg()
				c.MaxInflight, c.MaxQueued, c.MaxWait, c.BatchMaxWait, c.SLO = 1, 10, time.Minute, time.Minute, 30*time.Second
				q := New(c, nil, nil)
				q.SetModel(perRequest(100 * time.Millisecond))
				ctx := context.Background()
				running, err := q.Acquire(ctx, Request{Weight: 1})
				if err != nil {
					t.Fatal(err)
				}
				// Queued in this order, with these deadlines (0: the
				// class's own objective: the SLO for interactive work,
				// none for batch).
				deadlines := []time.Duration{0, 20 * time.Second, 0, 10 * time.Second, 15 * time.Second}
				var chs []<-chan result
				for _, d := range deadlines {
					chs = append(chs, acquireAsync(q, ctx, Request{Weight: 1, Class: class, Deadline: d}))
					synctest.Wait()
					time.Sleep(time.Millisecond)
				}
				// Due at +10, +15 and +20 s, then the two without a
				// deadline of their own in arrival order: at +30 s (the
				// SLO) for interactive work, never for batch work.
				want := []int{3, 4, 1, 0, 2}
				prev := running
				for _, i := range want {
					prev.Release()
					synctest.Wait()
					select {
					case r := <-chs[i]:
						if r.err != nil {
							t.Fatalf("request %d (deadline %s): %v", i, deadlines[i], r.err)
						}
						prev = r.t
					default:
						t.Fatalf("request %d (deadline %s) was not the next served; want the order %v", i, deadlines[i], want)
					}
				}
				prev.Release()
			})
		})
	}
}

// A request is judged against its own deadline where it is shorter than
// the SLO: refused at arrival with the predicted time in the message
// (deadline), while the same request without one is admitted; a deadline
// the request could not meet even alone in the engine is refused as such
// (deadline_too_short), whatever the load.
func TestOwnDeadlineAdmission(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait, c.SLO = 1, 10, 10*time.Second, 5*time.Second
		q := New(c, nil, nil)
		q.SetModel(perRequest(time.Second)) // 1 s a request, 1 s its tail at the starting level
		ctx := context.Background()

		_, err := q.Acquire(ctx, Request{Weight: 1, Deadline: 500 * time.Millisecond})
		ref := refusal(t, err)
		if ref.Reason != ReasonDeadlineTooShort || !strings.Contains(ref.Message, "alone exceeds its deadline of 500ms") {
			t.Fatalf("a deadline shorter than the request alone: %+v, want deadline_too_short naming it", ref)
		}

		a, err := q.Acquire(ctx, Request{Weight: 1, Deadline: 1500 * time.Millisecond})
		if err != nil {
			t.Fatalf("a 1.5-s deadline on an idle engine of 1-s requests: %v", err)
		}
		// a ends in 1 s: the next waits 1 s, plus its 1 s: 2 s.
		_, err = q.Acquire(ctx, Request{Weight: 1, Deadline: 1500 * time.Millisecond})
		ref = refusal(t, err)
		if ref.Reason != ReasonDeadline || !strings.Contains(ref.Message, "predicted wait of 1s plus the engine's 1s") ||
			!strings.Contains(ref.Message, "its deadline of 1.5s") || ref.RetryAfter != 500*time.Millisecond {
			t.Fatalf("a deadline the load would miss: %+v, want deadline with the predicted times and Retry-After 0.5 s", ref)
		}
		b := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		select {
		case r := <-b:
			t.Fatalf("without a deadline, under the 5-s SLO, the request should queue: %+v", r)
		default:
		}
		a.Release()
		synctest.Wait()
		r := <-b
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.t.Release()
	})
}

// An interactive request's deadline never stretches the SLO unless the
// operator allows it (DeadlineBeyondSLO); batch work, which has no SLO,
// is judged against its deadline alone.
func TestDeadlineBeyondSLO(t *testing.T) {
	for _, beyond := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			c := cfg()
			c.MaxInflight, c.MaxQueued, c.MaxWait, c.SLO, c.DeadlineBeyondSLO = 1, 10, time.Minute, 2500*time.Millisecond, beyond
			q := New(c, nil, nil)
			q.SetModel(perRequest(time.Second))
			ctx := context.Background()
			a, _ := q.Acquire(ctx, Request{Weight: 1})
			b := acquireAsync(q, ctx, Request{Weight: 1})
			synctest.Wait()
			// Third in line: 2 s of wait and 1 s of its own, past 2.5 s.
			cc := acquireAsync(q, ctx, Request{Weight: 1, Deadline: 10 * time.Second})
			synctest.Wait()
			var refused bool
			select {
			case r := <-cc:
				ref := refusal(t, r.err)
				refused = ref.Reason == ReasonSLO
			default:
			}
			if refused == beyond {
				t.Errorf("DeadlineBeyondSLO %v: a 10-s deadline predicted 3 s under a 2.5-s SLO refused: %v", beyond, refused)
			}
			// Batch work's own deadline is its only objective.
			_, err := q.Acquire(ctx, Request{Weight: 1, Class: Batch, Deadline: 2 * time.Second})
			if ref := refusal(t, err); ref.Reason != ReasonDeadline {
				t.Errorf("a batch request that would miss its own deadline: %+v, want deadline", ref)
			}
			a.Release()
			synctest.Wait()
			(<-b).t.Release()
			synctest.Wait()
			if !refused {
				(<-cc).t.Release()
			}
		})
	}
}

// A waiting request is told, every Updates, how many are queued ahead of
// it and when it is predicted to be sent; once sent, it is told nothing
// more.
func TestWaitingUpdates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait = 1, 10, time.Minute
		q := New(c, nil, nil)
		q.SetModel(perRequest(100 * time.Millisecond)) // 100 tokens: 10 s a request
		shape := enginemodel.Shape{MaxTokens: 100}
		ctx := context.Background()
		a, _ := q.Acquire(ctx, Request{Weight: 1, Shape: shape})
		type update struct {
			ahead int
			start time.Duration
		}
		var bu, cu []update
		b := acquireAsync(q, ctx, Request{Weight: 1, Shape: shape, Updates: time.Second, Waiting: func(n int, s time.Duration) { bu = append(bu, update{n, s}) }})
		synctest.Wait()
		cc := acquireAsync(q, ctx, Request{Weight: 1, Shape: shape, Updates: time.Second, Waiting: func(n int, s time.Duration) { cu = append(cu, update{n, s}) }})
		synctest.Wait()
		time.Sleep(2500 * time.Millisecond)
		synctest.Wait()
		if len(bu) != 2 || len(cu) != 2 {
			t.Fatalf("after 2.5 s, %d and %d updates, want 2 each", len(bu), len(cu))
		}
		for i := range 2 {
			if bu[i].ahead != 0 || cu[i].ahead != 1 || bu[i].start <= 0 || cu[i].start < bu[i].start+5*time.Second {
				t.Errorf("update %d: %+v and %+v, want 0 and 1 ahead, the second predicted a request's time (10 s) after the first", i, bu[i], cu[i])
			}
		}
		if bu[1].start >= bu[0].start {
			t.Errorf("the predicted start did not come closer: %v, then %v", bu[0].start, bu[1].start)
		}
		a.Release()
		synctest.Wait()
		rb := <-b
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if len(bu) != 2 {
			t.Errorf("%d updates for a request that was sent after 2, want no more", len(bu))
		}
		if len(cu) != 5 || cu[4].ahead != 0 {
			t.Errorf("the last of %d updates: %+v, want 5, with none ahead once the first was sent", len(cu), cu[len(cu)-1])
		}
		rb.t.Release()
		synctest.Wait()
		(<-cc).t.Release()
	})
}
