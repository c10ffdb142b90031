package main

// The qwen2 architecture (-arch qwen2, -preset qwen2.5-0.5b): Qwen2's
// blocks (grouped-query attention with q, k and v biases, NeoX RoPE with
// base 1e6, SwiGLU, RMS norm with eps 1e-6), its tensor names and GGUF
// keys as Ollama's converter writes them, F16 (or BF16) matrices and F32
// norms and biases, and a GPT-2 byte-level BPE vocabulary (bpe.go), so
// that a model of Qwen2.5-0.5B's shape costs an engine what the real one
// does: the same weight reads, LM head and KV cache.
//
// The embeddings are tied, as Qwen2.5-0.5B's are: there is no
// output.weight, and the LM head is token_embd. The llama model's anchor
// (main.go) needs an output row different from the input one, so it is
// kept another way here. Dimension 0 of every embedding is still a
// positive constant that no block reads (its norm weights are 0 there)
// or writes (the rows of attn_output and ffn_down that feed it are 0),
// but it is anchorAllowed (2) for the tokens an answer may contain and
// anchorOther (1) for the others, whose other dimensions are 0. After the
// final RMS norm, whose weight there is outputGain, the hidden state's
// dimension 0 is h0 = outputGain * e0 / rms > 0, e0 being the current
// token's anchor, and a token's logit is h0 times its own anchor plus the
// rest of the dot product, which is 0 for an unwanted token. So every
// unwanted token's logit is h0 below the allowed ones' mean, at least
// outputGain / rms even when the current token is itself unwanted (the
// "\n" that ends a chat prompt), while the allowed ones spread by about
// 2: greedy decoding, and any sampling, never picks an unwanted token,
// and every answer is exactly max_tokens long.
//
// Tying has a second cost: the current token's embedding is part of the
// hidden state, so with output_norm's usual positive weights every token
// would favour itself, and greedy decoding repeats one token, which
// Ollama aborts after 30 times (llm/server.go: "token repeat limit";
// llama.cpp's runner hides it with its default repeat_penalty 1.1, the
// Ollama engine has none). So output_norm's weight is negative in the
// other dimensions (-2/sqrt(width)), and the embeddings' other
// dimensions have standard deviation 1, as large as the blocks' writes:
// the current token's own logit is then 4 to 6 spreads below the mean,
// and the next token is some other one.
//
// TestAnchorMargin checks both with a forward pass of the written weights
// (the tiny model's margin is 186 logits, the preset's 120), and that no
// token comes twice in a row in 40 greedy steps.
//
// The weights are drawn uniformly (the matrices with the llama model's
// standard deviations, 1/sqrt(fan-in)), each tensor from its own PCG
// stream seeded by -seed and its name, and written row by row as fs/ggml's
// writer asks for them (it writes the tensors in parallel, one goroutine
// a CPU): the preset's 991 MB take 7 s and 27 MB of memory on 2 cores.

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"

	"github.com/ollama/ollama/fs/ggml"
)

const (
	anchorAllowed = 2.0
	anchorOther   = 1.0
	biasStd       = 0.02 // q, k and v biases: small, or they make every position's attention alike
	ropeBase      = 1e6
	rmsEps        = 1e-6
)

// outputGain is output_norm's weight in dimension 0. The residual stream
// starts at a variance of about 1 (the embeddings) and grows by about 1.1
// a block, so its RMS is about sqrt(1 + 1.1 layers) and the margin at
// least about 100 logits.
func outputGain(layers int) float32 {
	return float32(100 * math.Sqrt(1+1.1*float64(layers)))
}

// dtypes are -dtype's tensor types.
var dtypes = map[string]uint32{"f16": uint32(ggml.TensorTypeF16), "bf16": uint32(ggml.TensorTypeBF16)}

type qwen2Config struct {
	name                                              string
	layers, width, heads, kvHeads, ffn, vocab, ctxLen int
	kind                                              uint32 // the matrices' tensor type
	seed                                              uint64
}

// chatML is the chat template written as tokenizer.chat_template: the
// ChatML template of Hugging Face's tokenizer_config.json files (Qwen2.5's
// own adds tools and a default system prompt). `ollama create` matches it
// against its templates (template/index.json) and gives the model its
// "chatml" template and the stop strings <|im_start|> and <|im_end|>, so
// no Modelfile TEMPLATE is needed.
const chatML = `{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}`

func writeQwen2(path string, c qwen2Config) error {
	kv, ts, _ := qwen2Model(c)
	return writeGGUF(path, kv, ts)
}

// qwen2Model returns the GGUF's keys and its tensors, which make their
// data as they are written, and its vocabulary.
func qwen2Model(c qwen2Config) (ggml.KV, []*ggml.Tensor, bpeVocab) {
	v := bpeVocabulary(c.vocab, rand.New(rand.NewPCG(c.seed, 0x9e3779b9)))
	headDim := c.width / c.heads
	kvWidth := headDim * c.kvHeads
	var ts []*ggml.Tensor
	// add appends a tensor of rows rows of cols values that fill makes;
	// GGUF's shape is the other way round (a row's length first).
	add := func(name string, kind uint32, rows, cols int, fill func(rng *rand.Rand, row int, dst []float32)) {
		h := fnv.New64a()
		h.Write([]byte(name))
		shape := []uint64{uint64(cols)}
		if rows > 1 {
			shape = append(shape, uint64(rows))
		}
		ts = append(ts, &ggml.Tensor{Name: name, Kind: kind, Shape: shape,
			WriterTo: &lazyTensor{kind: kind, rows: rows, cols: cols, seed: [2]uint64{c.seed, h.Sum64()}, fill: fill}})
	}
	random := func(std float64) func(*rand.Rand, int, []float32) {
		return func(rng *rand.Rand, _ int, dst []float32) { uniform(rng, dst, std) }
	}
	// randomBut0 leaves row 0, which feeds the anchor, zero.
	randomBut0 := func(std float64) func(*rand.Rand, int, []float32) {
		return func(rng *rand.Rand, row int, dst []float32) {
			if row == 0 {
				clear(dst)
				return
			}
			uniform(rng, dst, std)
		}
	}
	norm := func(dim0, rest float32) func(*rand.Rand, int, []float32) {
		return func(_ *rand.Rand, _ int, dst []float32) {
			for i := range dst {
				dst[i] = rest
			}
			dst[0] = dim0
		}
	}
	f32 := uint32(ggml.TensorTypeF32)
	w := 1 / math.Sqrt(float64(c.width))
	add("token_embd.weight", c.kind, c.vocab, c.width, func(rng *rand.Rand, t int, dst []float32) {
		if !v.allowed[t] {
			clear(dst)
			dst[0] = anchorOther
			return
		}
		dst[0] = anchorAllowed
		uniform(rng, dst[1:], 1)
	})
	add("output_norm.weight", f32, 1, c.width, norm(outputGain(c.layers), float32(-2/math.Sqrt(float64(c.width)))))
	for i := range c.layers {
		blk := func(n string) string { return fmt.Sprintf("blk.%d.%s", i, n) }
		add(blk("attn_norm.weight"), f32, 1, c.width, norm(0, 1))
		add(blk("attn_q.weight"), c.kind, c.width, c.width, random(w))
		add(blk("attn_q.bias"), f32, 1, c.width, random(biasStd))
		add(blk("attn_k.weight"), c.kind, kvWidth, c.width, random(w))
		add(blk("attn_k.bias"), f32, 1, kvWidth, random(biasStd))
		add(blk("attn_v.weight"), c.kind, kvWidth, c.width, random(w))
		add(blk("attn_v.bias"), f32, 1, kvWidth, random(biasStd))
		add(blk("attn_output.weight"), c.kind, c.width, c.width, randomBut0(w))
		add(blk("ffn_norm.weight"), f32, 1, c.width, norm(0, 1))
		add(blk("ffn_gate.weight"), c.kind, c.ffn, c.width, random(w))
		add(blk("ffn_up.weight"), c.kind, c.ffn, c.width, random(w))
		add(blk("ffn_down.weight"), c.kind, c.width, c.ffn, randomBut0(1/math.Sqrt(float64(c.ffn))))
	}

	fileType := ggml.FileTypeF16
	if c.kind == uint32(ggml.TensorTypeBF16) {
		fileType = ggml.FileTypeBF16
	}
	kv := ggml.KV{
		"general.architecture":                   "qwen2",
		"general.name":                           c.name,
		"general.file_type":                      uint32(fileType),
		"general.quantization_version":           uint32(2),
		"qwen2.block_count":                      uint32(c.layers),
		"qwen2.context_length":                   uint32(c.ctxLen),
		"qwen2.embedding_length":                 uint32(c.width),
		"qwen2.feed_forward_length":              uint32(c.ffn),
		"qwen2.attention.head_count":             uint32(c.heads),
		"qwen2.attention.head_count_kv":          uint32(c.kvHeads),
		"qwen2.attention.layer_norm_rms_epsilon": float32(rmsEps),
		"qwen2.rope.freq_base":                   float32(ropeBase),
		"tokenizer.ggml.model":                   "gpt2",
		"tokenizer.ggml.pre":                     "qwen2",
		"tokenizer.ggml.tokens":                  v.tokens,
		"tokenizer.ggml.token_type":              v.types,
		"tokenizer.ggml.merges":                  v.merges,
		"tokenizer.ggml.bos_token_id":            uint32(v.endOfText),
		"tokenizer.ggml.eos_token_id":            uint32(v.imEnd),
		"tokenizer.ggml.padding_token_id":        uint32(v.endOfText),
		"tokenizer.ggml.add_bos_token":           false,
		"tokenizer.ggml.add_eos_token":           false,
		"tokenizer.chat_template":                chatML,
	}
	return kv, ts, v
}

// lazyTensor writes rows rows of cols values, each made by fill when it
// is written, in its tensor type.
type lazyTensor struct {
	kind       uint32
	rows, cols int
	seed       [2]uint64
	fill       func(rng *rand.Rand, row int, dst []float32)
}

func (t *lazyTensor) WriteTo(w io.Writer) (int64, error) {
	rng := rand.New(rand.NewPCG(t.seed[0], t.seed[1]))
	row := make([]float32, t.cols)
	const flushAt = 1 << 20
	buf := make([]byte, 0, flushAt+4*t.cols)
	var n int64
	flush := func() error {
		m, err := w.Write(buf)
		n += int64(m)
		buf = buf[:0]
		return err
	}
	for r := range t.rows {
		t.fill(rng, r, row)
		switch ggml.TensorType(t.kind) {
		case ggml.TensorTypeF32:
			for _, x := range row {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(x))
			}
		case ggml.TensorTypeF16:
			for _, x := range row {
				buf = binary.LittleEndian.AppendUint16(buf, float16(x))
			}
		case ggml.TensorTypeBF16:
			for _, x := range row {
				buf = binary.LittleEndian.AppendUint16(buf, bfloat16(x))
			}
		default:
			return n, fmt.Errorf("tensor type %d", t.kind)
		}
		if len(buf) >= flushAt {
			if err := flush(); err != nil {
				return n, err
			}
		}
	}
	return n, flush()
}

// uniform fills dst with values drawn uniformly from a zero-mean
// distribution of standard deviation std, four from each 64 random bits.
func uniform(rng *rand.Rand, dst []float32, std float64) {
	scale := float32(std * math.Sqrt(3) / 32768)
	for i := 0; i < len(dst); i += 4 {
		x := rng.Uint64()
		for j := i; j < min(i+4, len(dst)); j++ {
			dst[j] = float32(int16(x)) * scale
			x >>= 16
		}
	}
}

// float16 returns f as IEEE half precision, rounded to nearest even.
func float16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case b&0x7fffffff > 0x7f800000: // NaN
		return sign | 0x7e00
	case exp >= 31: // too large, or infinite
		return sign | 0x7c00
	case exp <= 0: // subnormal or zero
		s := uint(14 - exp) // the value is (mant|1<<23) >> s, in units of 2^-24
		if s > 24 {
			return sign
		}
		full := mant | 1<<23
		m, rem, half := full>>s, full&(1<<s-1), uint32(1)<<(s-1)
		if rem > half || rem == half && m&1 == 1 {
			m++
		}
		return sign | uint16(m)
	}
	h := uint32(exp)<<10 | mant>>13
	if rem := mant & 0x1fff; rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
		h++ // may carry into the exponent, up to infinity: both right
	}
	return sign | uint16(h)
}

// bfloat16 returns f as bfloat16, rounded to nearest even.
func bfloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
