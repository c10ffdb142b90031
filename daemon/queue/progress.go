package queue

import "time"

// progressMark is where SampleProgress last looked: when, the number that
// tells the tickets it saw from those it did not, and the tokens streamed
// since by requests that ended.
type progressMark struct {
	at    time.Time
	seq   uint64
	ended int64
}

// SampleProgress measures an engine step now, from what the running
// requests streamed since the last call: its time (each stream gets one
// token a step) and the tokens it carried (every stream's tokens, and the
// prompts of the requests whose first token came, all over the steps), and
// teaches it to the model (Model.ObserveStep). A finished answer teaches
// the model only when it ends, a whole request's time after the limit let
// it in, and with the concurrency averaged over its life; the streams say
// within a fraction of a second what a step costs with what the engine
// carries now, in a burst's transient as in the steady state, so the limit
// can follow first tokens (Model.FirstToken) without outrunning what the model
// knows. Call it periodically (the limit loop does, four times a second).
func (q *Queue) SampleProgress(now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	prev := q.progress
	dt := now.Sub(prev.at).Seconds()
	var streams, marked, all int64
	hidden := false
	for e := q.running.Front(); e != nil; e = e.Next() {
		t := e.Value.(*Ticket)
		hidden = hidden || !t.stream
		// Only requests that were streaming tokens at the last mark time
		// the steps: one that started since spent part of the time in
		// its prefill.
		if t.markSeq == prev.seq && t.markTokens > 0 {
			streams += int64(t.weight)
			marked += t.tokens.Load() - t.markTokens
		}
	}
	// At least a few steps, so that the count's granularity does not
	// dominate: until then the mark stays where it is. Moving it on at
	// every call would keep only the windows in which steps were short
	// and bias the step time low: a step that carries 2,048 prompt tokens
	// on a small card takes most of a second.
	if !prev.at.IsZero() && dt > 0 && streams > 0 && marked < minSampleSteps*streams && dt < maxSampleWindow.Seconds() {
		return
	}
	q.progress = progressMark{at: now, seq: prev.seq + 1}
	prefilled := q.prefilled.Swap(0)
	for e := q.running.Front(); e != nil; e = e.Next() {
		t := e.Value.(*Ticket)
		tok := t.tokens.Load()
		all += tok - t.markTokens
		t.markSeq, t.markTokens = q.progress.seq, tok
	}
	// An answer that is not streamed carries tokens in the steps that no
	// count shows: with one running, the tokens a step carries are not
	// known, and the steps are learned from the answers when they end.
	if prev.at.IsZero() || dt <= 0 || streams == 0 || marked < minSampleSteps*streams || hidden {
		return
	}
	steps := float64(marked) / float64(streams)
	q.model.ObserveStep(float64(all+prev.ended+prefilled)/steps, dt/steps)
}

const (
	// minSampleSteps is how many steps a sample of the streams spans at
	// least, and maxSampleWindow how long it waits for them before it
	// starts again.
	minSampleSteps  = 4
	maxSampleWindow = 10 * time.Second
)
