// Package modelcards owns the one part of vLLM's GET /v1/models answer
// llmlab reads: each model card carries the engine's context length
// (vllm/entrypoints/openai/models/serving.py, ModelCard.max_model_len).
// llmlabd learns its context length from it (daemon/server), and llmlab
// tune-engine records what each point's engine reported.
package modelcards

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// MaxBody is the most of an answer that is read: a list of a few model
// cards is a few KiB.
const MaxBody = 1 << 20

// List is the answer: the model cards.
type List struct {
	Data []Card `json:"data"`
}

// Card is one model the engine serves.
type Card struct {
	ID string `json:"id"`
	// MaxModelLen is the context length in tokens (0: not said; engines
	// other than vLLM).
	MaxModelLen int `json:"max_model_len"`
}

// MaxModelLen is the context length every model listed fits in: the
// smallest the cards report; 0 when none reports one.
func (l List) MaxModelLen() int {
	n := 0
	for _, m := range l.Data {
		if m.MaxModelLen > 0 && (n == 0 || m.MaxModelLen < n) {
			n = m.MaxModelLen
		}
	}
	return n
}

// Parse reads an answer, at most MaxBody bytes of it.
func Parse(r io.Reader) (List, error) {
	var l List
	err := json.NewDecoder(io.LimitReader(r, MaxBody)).Decode(&l)
	return l, err
}

// Fetch asks url (an engine's /v1/models) for its model cards.
func Fetch(ctx context.Context, client *http.Client, url string) (List, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return List{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return List{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return List{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	l, err := Parse(resp.Body)
	if err != nil {
		return List{}, fmt.Errorf("GET %s: %w", url, err)
	}
	return l, nil
}
