package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ollama/ollama/fs/ggml"
	"github.com/ollama/ollama/template"
	"github.com/ollama/ollama/tokenizer"
)

// tiny is a small qwen2 model: the preset's code path at a test's size.
var tiny = []string{"-arch", "qwen2", "-layers", "2", "-width", "64", "-heads", "4", "-kv-heads", "2", "-ffn", "128", "-vocab", "4096"}

func mustParse(t *testing.T, args ...string) options {
	t.Helper()
	o, err := parse(args)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// qwen2Tokenizer is Ollama's own tokenizer for v, as its qwen2 model
// (model/models/qwen2) makes it.
func qwen2Tokenizer(v bpeVocab) tokenizer.Tokenizer {
	return tokenizer.NewBytePairEncoding(&tokenizer.Vocabulary{
		Values: v.tokens, Types: v.types, Merges: v.merges,
		BOS: []int32{int32(v.endOfText)}, EOS: []int32{int32(v.imEnd)},
	}, `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`)
}

func TestVocabulary(t *testing.T) {
	v := bpeVocabulary(4096, rand.New(rand.NewPCG(1, 2)))
	if len(v.tokens) != 4096 || len(v.types) != 4096 || len(v.allowed) != 4096 {
		t.Fatalf("%d tokens, %d types, %d allowed", len(v.tokens), len(v.types), len(v.allowed))
	}
	ids := map[string]int{}
	for i, tok := range v.tokens {
		if j, ok := ids[tok]; ok {
			t.Fatalf("token %q is both %d and %d", tok, j, i)
		}
		ids[tok] = i
	}
	for _, m := range v.merges {
		l, r, _ := strings.Cut(m, " ")
		_, okl := ids[l]
		_, okr := ids[r]
		if _, ok := ids[l+r]; !ok || !okl || !okr {
			t.Errorf("merge %q: its tokens are not all in the vocabulary", m)
		}
	}
	if v.tokens[0] != "!" || v.tokens[v.endOfText] != endOfText || v.tokens[v.imStart] != imStart || v.tokens[v.imEnd] != imEnd {
		t.Errorf("tokens[0] %q, special tokens %q %q %q", v.tokens[0], v.tokens[v.endOfText], v.tokens[v.imStart], v.tokens[v.imEnd])
	}
	tok := qwen2Tokenizer(v)
	// Each word a token, with or without a space before it.
	for _, w := range append(slices.Clone(benchWords), "user", "assistant") {
		for _, s := range []string{w, " " + w} {
			got, err := tok.Encode(s, false)
			if err != nil || len(got) != 1 || v.tokens[got[0]] != byteLevel(s) {
				t.Errorf("Encode(%q) = %v, %v; want the one token %q", s, got, err, byteLevel(s))
			}
		}
	}
	prompt := "<|im_start|>user\nWrite apple river stone cloud word word<|im_end|>\n<|im_start|>assistant\n"
	got, err := tok.Encode(prompt, false)
	if err != nil || len(got) != 15 {
		t.Errorf("Encode(%q) = %v, %v: want 15 tokens", prompt, got, err)
	}
	if s, err := tok.Decode(got); s != prompt || err != nil {
		t.Errorf("Decode = %q, %v", s, err)
	}
	// What an answer may contain decodes to ASCII letters and spaces.
	var allowed []int32
	for i, ok := range v.allowed {
		if ok {
			allowed = append(allowed, int32(i))
		} else if i >= 256 && i < v.endOfText {
			t.Errorf("token %d %q is not allowed", i, v.tokens[i])
		}
	}
	s, err := tok.Decode(allowed)
	if err != nil || strings.Trim(s, " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") != "" {
		t.Errorf("the allowed tokens decode to %q, %v", s, err)
	}
	if n := len(allowed); n != 4096-3-(256-52) {
		t.Errorf("%d tokens allowed", n)
	}
}

func TestChatTemplate(t *testing.T) {
	named, err := template.Named(chatML)
	if err != nil || named.Name != "chatml" || named.Parameters == nil || !slices.Contains(named.Parameters.Stop, imEnd) {
		t.Fatalf("template.Named: %+v, %v", named, err)
	}
}

func TestFloat16(t *testing.T) {
	for f, want := range map[float32]uint16{0: 0, 1: 0x3c00, -2: 0xc000, 0.1: 0x2e66, 65504: 0x7bff, 65520: 0x7c00,
		1.0 / (1 << 24): 0x0001, 1.5 / (1 << 24): 0x0002, 0.5 / (1 << 24): 0, 1.0 / (1 << 14): 0x0400, 1023.0 / (1 << 24): 0x03ff,
		float32(math.Inf(-1)): 0xfc00, 2049: 0x6800, 2051: 0x6802} {
		if got := float16(f); got != want {
			t.Errorf("float16(%g) = %#04x, want %#04x", f, got, want)
		}
	}
	for f, want := range map[float32]uint16{1: 0x3f80, -2: 0xc000, 0.1: 0x3dcd} {
		if got := bfloat16(f); got != want {
			t.Errorf("bfloat16(%g) = %#04x, want %#04x", f, got, want)
		}
	}
}

// TestPreset checks the preset's shape: Qwen2.5-0.5B's 494,032,768
// parameters, its tensors but output.weight, F16 matrices.
func TestPreset(t *testing.T) {
	o := mustParse(t, "-preset", "qwen2.5-0.5b")
	want := qwen2Config{name: "llmlab-qwen2.5-0.5b", layers: 24, width: 896, heads: 14, kvHeads: 2, ffn: 4864, vocab: 151936,
		ctxLen: 32768, kind: uint32(ggml.TensorTypeF16), seed: 1}
	if o.arch != "qwen2" || o.out != "llmlab-qwen2.5-0.5b.gguf" || o.qwen2Config != want {
		t.Fatalf("parse = %+v", o)
	}
	if o := mustParse(t, "-preset", "qwen2.5-0.5b", "-layers", "2"); o.layers != 2 || o.width != 896 {
		t.Errorf("a flag given beside the preset: %+v", o)
	}
	_, ts, v := qwen2Model(o.qwen2Config)
	var params, size uint64
	for _, x := range ts {
		params += x.Elements()
		size += x.Size()
		if x.Name == "output.weight" || len(x.Shape) == 2 && x.Kind != uint32(ggml.TensorTypeF16) || len(x.Shape) == 1 && x.Kind != 0 {
			t.Errorf("tensor %s %v kind %d", x.Name, x.Shape, x.Kind)
		}
	}
	if params != 494032768 || len(ts) != 2+24*12 {
		t.Errorf("%d parameters in %d tensors", params, len(ts))
	}
	t.Logf("%d parameters, %d bytes of tensors", params, size)
	if n := len(v.tokens); n != 151936 || v.imEnd != n-1 {
		t.Errorf("%d tokens, <|im_end|> %d", n, v.imEnd)
	}
}

// TestGGUF writes the tiny model and reads it back with Ollama's decoder.
func TestGGUF(t *testing.T) {
	o := mustParse(t, tiny...)
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := writeQwen2(path, o.qwen2Config); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g, err := ggml.Decode(f, -1)
	if err != nil {
		t.Fatal(err)
	}
	kv := g.KV()
	if kv.Architecture() != "qwen2" || kv.Uint("block_count") != 2 || kv.Uint("embedding_length") != 64 ||
		kv.Uint("attention.head_count") != 4 || kv.Uint("attention.head_count_kv") != 2 || kv.Uint("feed_forward_length") != 128 ||
		kv.Float("rope.freq_base") != 1e6 || kv.Float("attention.layer_norm_rms_epsilon") != 1e-6 ||
		kv.String("tokenizer.ggml.model") != "gpt2" || kv.String("tokenizer.ggml.pre") != "qwen2" ||
		len(kv.Strings("tokenizer.ggml.tokens")) != 4096 || len(kv.Ints("tokenizer.ggml.token_type")) != 4096 ||
		len(kv.Strings("tokenizer.ggml.merges")) == 0 || kv.Uint("tokenizer.ggml.eos_token_id") != 4095 || kv.ChatTemplate() != chatML {
		t.Errorf("keys: %v", kv)
	}
	shapes := map[string][]uint64{}
	for _, x := range g.Tensors().Items() {
		shapes[x.Name] = x.Shape
	}
	for name, want := range map[string][]uint64{
		"token_embd.weight": {64, 4096}, "output_norm.weight": {64},
		"blk.1.attn_q.weight": {64, 64}, "blk.1.attn_q.bias": {64},
		"blk.1.attn_k.weight": {64, 32}, "blk.1.attn_k.bias": {32},
		"blk.1.attn_v.weight": {64, 32}, "blk.1.attn_v.bias": {32}, "blk.1.attn_output.weight": {64, 64},
		"blk.1.ffn_gate.weight": {64, 128}, "blk.1.ffn_up.weight": {64, 128}, "blk.1.ffn_down.weight": {128, 64},
		"blk.1.attn_norm.weight": {64}, "blk.1.ffn_norm.weight": {64},
	} {
		if !slices.Equal(shapes[name], want) {
			t.Errorf("%s: shape %v, want %v", name, shapes[name], want)
		}
	}
	if len(shapes) != 2+2*12 {
		t.Errorf("%d tensors", len(shapes))
	}
	st, _ := f.Stat()
	var data uint64
	for _, x := range g.Tensors().Items() {
		data = max(data, x.Offset+x.Size())
	}
	if uint64(st.Size()) != g.Tensors().Offset+data {
		t.Errorf("file of %d bytes, tensors end at %d", st.Size(), g.Tensors().Offset+data)
	}
}

// TestAnchorMargin runs the tiny model's forward pass (in float32, from
// the F16 weights it writes) on a chat prompt, which ends with an
// unwanted token ("\n"), and 40 greedy steps after it, as Ollama's engine
// decodes with no repeat penalty: every step's best token must be an
// allowed one, ahead of every unwanted token by a wide margin, and not
// the token before it (Ollama aborts an answer that repeats one token 30
// times). MKMODEL_SIM_PRESET=1 runs 2 steps of the preset too (a minute
// on one CPU).
func TestAnchorMargin(t *testing.T) {
	configs := [][]string{tiny}
	if os.Getenv("MKMODEL_SIM_PRESET") != "" {
		configs = append(configs, []string{"-preset", "qwen2.5-0.5b"})
	}
	for _, args := range configs {
		o := mustParse(t, args...)
		_, ts, v := qwen2Model(o.qwen2Config)
		ids, err := qwen2Tokenizer(v).Encode("<|im_start|>user\nWrite apple river stone cloud word word<|im_end|>\n<|im_start|>assistant\n", false)
		if err != nil {
			t.Fatal(err)
		}
		m := newSim(o.qwen2Config, ts)
		steps := 40
		if o.layers > 2 {
			steps = 2
		}
		var answer strings.Builder
		minMargin := float32(math.Inf(1))
		for step := range steps {
			logits := m.forward(ids)
			best, bestUnwanted := -1, -1
			for i, l := range logits {
				if v.allowed[i] {
					if best < 0 || l > logits[best] {
						best = i
					}
				} else if bestUnwanted < 0 || l > logits[bestUnwanted] {
					bestUnwanted = i
				}
			}
			margin := logits[best] - logits[bestUnwanted]
			minMargin = min(minMargin, margin)
			if margin < 50 {
				t.Errorf("%s step %d: best %q %.1f, best unwanted %q %.1f", o.name, step, v.tokens[best], logits[best],
					v.tokens[bestUnwanted], logits[bestUnwanted])
			}
			if step > 0 && int32(best) == ids[len(ids)-1] {
				t.Errorf("%s step %d: %q again", o.name, step, v.tokens[best])
			}
			ids = append(ids, int32(best))
			answer.WriteString(v.tokens[best])
		}
		t.Logf("%s: margin at least %.1f: %s", o.name, minMargin, answer.String())
	}
}

// sim is a float32 forward pass of a qwen2Model's tensors, made again as
// they would be written.
type sim struct {
	c  qwen2Config
	ts map[string]*ggml.Tensor
}

func newSim(c qwen2Config, ts []*ggml.Tensor) sim {
	m := sim{c, map[string]*ggml.Tensor{}}
	for _, x := range ts {
		m.ts[x.Name] = x
	}
	return m
}

// rowWriter decodes a tensor's bytes as it is written, a row at a time.
type rowWriter struct {
	kind ggml.TensorType
	cols int
	buf  []byte
	row  int
	fn   func(r int, row []float32)
}

func (w *rowWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	size := 2
	if w.kind == ggml.TensorTypeF32 {
		size = 4
	}
	row := make([]float32, w.cols)
	for len(w.buf) >= w.cols*size {
		for i := range row {
			switch w.kind {
			case ggml.TensorTypeF32:
				row[i] = math.Float32frombits(binary.LittleEndian.Uint32(w.buf[4*i:]))
			case ggml.TensorTypeF16:
				row[i] = fromFloat16(binary.LittleEndian.Uint16(w.buf[2*i:]))
			case ggml.TensorTypeBF16:
				row[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(w.buf[2*i:])) << 16)
			}
		}
		w.fn(w.row, row)
		w.row++
		w.buf = w.buf[w.cols*size:]
	}
	return len(p), nil
}

func fromFloat16(h uint16) float32 {
	sign := float32(1)
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, mant := int(h>>10&0x1f), float64(h&0x3ff)
	if exp == 0 {
		return sign * float32(math.Ldexp(mant, -24))
	}
	return sign * float32(math.Ldexp(1024+mant, exp-25))
}

func (m sim) rows(name string, fn func(r int, row []float32)) {
	x := m.ts[name]
	if _, err := x.WriteTo(&rowWriter{kind: ggml.TensorType(x.Kind), cols: int(x.Shape[0]), fn: fn}); err != nil {
		panic(err)
	}
}

func (m sim) matrix(name string) [][]float32 {
	var out [][]float32
	m.rows(name, func(_ int, row []float32) { out = append(out, slices.Clone(row)) })
	return out
}

func (m sim) vector(name string) []float32 { return m.matrix(name)[0] }

func matvec(w [][]float32, x []float32, bias []float32) []float32 {
	out := make([]float32, len(w))
	for i, row := range w {
		var s float32
		for j, a := range row {
			s += a * x[j]
		}
		out[i] = s
		if bias != nil {
			out[i] += bias[i]
		}
	}
	return out
}

func rmsNorm(x, w []float32) []float32 {
	var ss float64
	for _, a := range x {
		ss += float64(a) * float64(a)
	}
	r := float32(1 / math.Sqrt(ss/float64(len(x))+rmsEps))
	out := make([]float32, len(x))
	for i, a := range x {
		out[i] = a * r * w[i]
	}
	return out
}

// rope rotates each head of x (NeoX style: dimension i with i+half).
func rope(x []float32, headDim, pos int) {
	half := headDim / 2
	for h := 0; h < len(x); h += headDim {
		for i := range half {
			theta := float64(pos) * math.Pow(ropeBase, -2*float64(i)/float64(headDim))
			s, c := math.Sincos(theta)
			a, b := x[h+i], x[h+i+half]
			x[h+i], x[h+i+half] = a*float32(c)-b*float32(s), a*float32(s)+b*float32(c)
		}
	}
}

// forward returns the logits after the last of ids.
func (m sim) forward(ids []int32) []float32 {
	c := m.c
	headDim := c.width / c.heads
	xs := make([][]float32, len(ids))
	want := map[int][]int{}
	for p, id := range ids {
		want[int(id)] = append(want[int(id)], p)
	}
	m.rows("token_embd.weight", func(r int, row []float32) {
		for _, p := range want[r] {
			xs[p] = slices.Clone(row)
		}
	})
	for l := range c.layers {
		blk := func(n string) string { return fmt.Sprintf("blk.%d.%s", l, n) }
		attnNorm, ffnNorm := m.vector(blk("attn_norm.weight")), m.vector(blk("ffn_norm.weight"))
		wq, wk, wv, wo := m.matrix(blk("attn_q.weight")), m.matrix(blk("attn_k.weight")), m.matrix(blk("attn_v.weight")), m.matrix(blk("attn_output.weight"))
		bq, bk, bv := m.vector(blk("attn_q.bias")), m.vector(blk("attn_k.bias")), m.vector(blk("attn_v.bias"))
		gate, up, down := m.matrix(blk("ffn_gate.weight")), m.matrix(blk("ffn_up.weight")), m.matrix(blk("ffn_down.weight"))
		qs, ks, vs := make([][]float32, len(xs)), make([][]float32, len(xs)), make([][]float32, len(xs))
		for p, x := range xs {
			n := rmsNorm(x, attnNorm)
			qs[p], ks[p], vs[p] = matvec(wq, n, bq), matvec(wk, n, bk), matvec(wv, n, bv)
			rope(qs[p], headDim, p)
			rope(ks[p], headDim, p)
		}
		for p, x := range xs {
			attn := make([]float32, c.width)
			for h := range c.heads {
				kvh := h / (c.heads / c.kvHeads)
				q := qs[p][h*headDim : (h+1)*headDim]
				scores := make([]float64, p+1)
				top := math.Inf(-1)
				for j := range p + 1 {
					var s float64
					for i, a := range q {
						s += float64(a) * float64(ks[j][kvh*headDim+i])
					}
					scores[j] = s / math.Sqrt(float64(headDim))
					top = max(top, scores[j])
				}
				var sum float64
				for j := range scores {
					scores[j] = math.Exp(scores[j] - top)
					sum += scores[j]
				}
				for j, s := range scores {
					for i := range headDim {
						attn[h*headDim+i] += float32(s/sum) * vs[j][kvh*headDim+i]
					}
				}
			}
			for i, a := range matvec(wo, attn, nil) {
				x[i] += a
			}
			n := rmsNorm(x, ffnNorm)
			g, u := matvec(gate, n, nil), matvec(up, n, nil)
			for i := range g {
				g[i] = g[i] / (1 + float32(math.Exp(-float64(g[i])))) * u[i]
			}
			for i, a := range matvec(down, g, nil) {
				x[i] += a
			}
		}
	}
	h := rmsNorm(xs[len(xs)-1], m.vector("output_norm.weight"))
	logits := make([]float32, c.vocab)
	head := "token_embd.weight"
	if _, ok := m.ts["output.weight"]; ok {
		head = "output.weight"
	}
	m.rows(head, func(r int, row []float32) {
		var s float32
		for i, a := range row {
			s += a * h[i]
		}
		logits[r] = s
	})
	return logits
}
