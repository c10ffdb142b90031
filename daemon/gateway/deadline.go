package gateway

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// DeadlineHeader states a client's own objective for one request, from its
// arrival to the end of its answer: a duration ("2s", "800ms") or seconds
// ("2.5"). Admission judges the request against it, and queued requests
// are served earliest deadline first within their class (daemon/queue).
const DeadlineHeader = "X-Llmlab-Deadline"

// maxDeadline bounds the header: longer than any answer an engine gives.
const maxDeadline = 24 * time.Hour

// parseDeadline reads DeadlineHeader's value.
func parseDeadline(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	d, err := time.ParseDuration(v)
	if err != nil {
		s, ferr := strconv.ParseFloat(v, 64)
		if ferr != nil || math.IsNaN(s) || math.IsInf(s, 0) {
			return 0, fmt.Errorf("%s must be a duration such as \"2s\" or \"800ms\", or seconds such as \"2.5\"; got %q", DeadlineHeader, v)
		}
		if s > maxDeadline.Seconds() {
			s = maxDeadline.Seconds() + 1
		}
		d = time.Duration(s * float64(time.Second))
	}
	if d <= 0 || d > maxDeadline {
		return 0, fmt.Errorf("%s must be above 0 and at most %s; got %q", DeadlineHeader, maxDeadline, v)
	}
	return d, nil
}
