package gateway

import (
	"bytes"
	"fmt"
	"net/http"
	"time"

	"github.com/valyala/fastjson"
)

// A streamed request that waits in the queue longer than
// Config.WaitUpdates is answered at once: status 200 and the stream's
// headers, then, every WaitUpdates while it waits, an SSE comment line
// (OpenAI clients skip lines that begin with a colon) with how many
// requests are queued ahead of it and when it is predicted to be sent.
// Its answer then follows in the same stream. Once the status has gone
// out, a failure cannot change it: a refusal (the queue's deadline, a
// drain) or an engine's error answer is sent as an OpenAI-shaped error
// event, after a comment line with the status it would have had
// (": llmlab status 503"), and counted with that status.

// maxHeld bounds the engine error body kept to send as an event.
const maxHeld = 64 << 10

// waitUpdate tells a waiting streamed request its place, answering it 200
// with the first update.
func waitUpdate(rec *recorder, ahead int, start time.Duration) {
	if !rec.early {
		h := rec.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		rec.WriteHeader(http.StatusOK)
		rec.early = true
	}
	fmt.Fprintf(rec, ": llmlab queued: %d ahead, predicted start in %.1fs\n\n", ahead, start.Seconds())
	rec.Flush()
}

// waited tells an answered request, whose headers went out before it
// waited its full time, how long it waited (QueueWaitHeader's value).
func waited(rec *recorder, d time.Duration) {
	fmt.Fprintf(rec, ": llmlab waited %.3fs\n\n", d.Seconds())
	rec.Flush()
}

// writeErrorEvent sends f as an error event on a stream already answered.
func writeErrorEvent(rec *recorder, f failure, reqID string) {
	fmt.Fprintf(rec, ": llmlab status %d\ndata: %s\n\n", rec.status, errorBody(f, reqID))
	rec.Flush()
}

// sendHeld sends an engine's error answer, held by the recorder because
// the status had gone out, as an error event: as it came when it is
// OpenAI's error envelope, its fields in one where it carries a message
// (vLLM's older {"object":"error","message":...}), else a generic one.
func sendHeld(rec *recorder, st *reqState) {
	if !rec.convert {
		return
	}
	rec.convert = false
	body := bytes.TrimSpace(rec.held)
	rec.held = nil
	v, err := fastjson.ParseBytes(body)
	switch {
	case err == nil && v.Exists("error"):
	case err == nil && v.Exists("message"):
		body = append(append([]byte(`{"error":`), body...), '}')
	default:
		writeErrorEvent(rec, failure{kind: typeServer, code: "engine_error",
			msg: fmt.Sprintf("The engine answered %d.", rec.status)}, st.id)
		return
	}
	fmt.Fprintf(rec, ": llmlab status %d\ndata: %s\n\n", rec.status, body)
	rec.Flush()
}
