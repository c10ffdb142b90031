package sim

import (
	"strings"
	"testing"
)

func TestMemoryPlan(t *testing.T) {
	p := Profiles["gtx1650"]
	def, err := p.Plan(0.9, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// At the profile's own knobs the overhead is the profile's.
	if want := int64(float64(p.GPUMemory)*0.9) - p.Weights - p.Overhead; def.KV != want {
		t.Fatalf("KV at the defaults = %d bytes, want %d", def.KV, want)
	}
	// More sequences: a larger sampler peak, a smaller KV cache.
	more, err := p.Plan(0.9, 512, 2048, 0)
	if err != nil {
		t.Fatal(err)
	}
	if more.KVBlocks >= def.KVBlocks || more.Overhead-def.Overhead != 256*samplerBytes {
		t.Fatalf("512 sequences: %d blocks, overhead +%d; defaults %d blocks", more.KVBlocks, more.Overhead-def.Overhead, def.KVBlocks)
	}
	for _, c := range []struct {
		util                float64
		seqs, batched, mlen int
		want                string
	}{
		{0.35, 0, 0, 0, "no memory left for the KV cache"},
		{0.5, 0, 0, 65536, "one request of max_model_len 65536 needs 0.75 GiB"},
		{0.9, 256, 128, 0, "max_num_batched_tokens (128) must be at least max_num_seqs (256)"},
		{1.5, 0, 0, 0, "want a fraction"},
	} {
		_, err := p.Plan(c.util, c.seqs, c.batched, c.mlen)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Plan(%g, %d, %d, %d) = %v, want an error saying %q", c.util, c.seqs, c.batched, c.mlen, err, c.want)
		}
	}
}
