package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// apiError is the OpenAI error envelope's body.
type apiError struct {
	Message   string  `json:"message"`
	Type      string  `json:"type"`
	Param     *string `json:"param"`
	Code      string  `json:"code"`
	RequestID string  `json:"request_id,omitempty"`
}

// Error types as OpenAI names them.
const (
	typeInvalid     = "invalid_request_error"
	typeAuth        = "authentication_error"
	typeRateLimit   = "rate_limit_exceeded"
	typeUnavailable = "service_unavailable"
	typeServer      = "server_error"
)

// writeError writes an OpenAI-shaped error. retryAfter (seconds) is sent
// when above zero. The message is what the client sees: never internal
// error text.
func writeError(w http.ResponseWriter, status int, errType, code, param, msg, reqID string, retryAfter int) {
	e := apiError{Message: msg, Type: errType, Code: code, RequestID: reqID}
	if param != "" {
		e.Param = &param
	}
	body, _ := json.Marshal(struct {
		Error apiError `json:"error"`
	}{e})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(retryAfter))
	}
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
