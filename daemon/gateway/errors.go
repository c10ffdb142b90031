package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// apiError is the OpenAI error envelope's body.
type apiError struct {
	Message   string    `json:"message"`
	Type      errorType `json:"type"`
	Param     *string   `json:"param"`
	Code      string    `json:"code"`
	RequestID string    `json:"request_id,omitempty"`
}

// errorType is an error's type, as OpenAI names them.
type errorType string

// Error types.
const (
	typeInvalid     errorType = "invalid_request_error"
	typeAuth        errorType = "authentication_error"
	typeRateLimit   errorType = "rate_limit_exceeded"
	typeUnavailable errorType = "service_unavailable"
	typeServer      errorType = "server_error"
)

// failure is an error answer: what the client is told, and the outcome
// it is counted as. Call sites name the fields they set; the others stay
// empty.
type failure struct {
	status int
	kind   errorType
	code   string
	// param names the request member at fault ("": none).
	param string
	// msg is what the client sees: never internal error text.
	msg string
	// retryAfter (seconds) is sent as Retry-After when above zero.
	retryAfter int
	// outcome is the answer's outcome in llmlab_requests_total and the
	// access log ("": decided from the status; writeError ignores it).
	outcome string
}

// errorBody is f as OpenAI's error envelope for the request reqID.
func errorBody(f failure, reqID string) []byte {
	e := apiError{Message: f.msg, Type: f.kind, Code: f.code, RequestID: reqID}
	if f.param != "" {
		e.Param = &f.param
	}
	body, _ := json.Marshal(struct {
		Error apiError `json:"error"`
	}{e})
	return body
}

// writeError writes f as an OpenAI-shaped error for the request reqID.
func writeError(w http.ResponseWriter, f failure, reqID string) {
	body := errorBody(f, reqID)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	if f.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(f.retryAfter))
	}
	w.WriteHeader(f.status)
	_, _ = w.Write(append(body, '\n'))
}
