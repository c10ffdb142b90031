// The results store: one JSON line per point, appended as each ends, so
// that an interrupted sweep resumes.

package tune

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
)

// readResults reads a results file (absent: none). A line cut short by a
// crash is skipped; its point is measured again.
func readResults(path string) (map[string]Result, error) {
	done := map[string]Result{}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return done, nil
	}
	if err != nil {
		return nil, err
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		var r Result
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &r) != nil {
			continue
		}
		done[r.Key()] = r
	}
	return done, nil
}

func appendResult(path string, r Result) error {
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return appendFile(path, string(line)+"\n")
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
