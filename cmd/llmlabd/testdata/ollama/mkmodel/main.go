// Command mkmodel writes a random-weight llama-architecture GGUF for
// Ollama: a real engine for llmlab's benchmarks and tests that needs no
// download (docs/benchmarks.md, "A real engine").
//
// The model is tiny (by default 2 layers, 64 wide) and answers nonsense,
// but Ollama runs it as it runs any llama model: tokenizer, KV cache,
// parallel slots, scheduling. Its vocabulary is SentencePiece-style words
// (with every prefix, so that the tokenizer can merge up to them) and
// contains the words of llmlab bench's prompts, one token each.
//
// Ollama ignores ignore_eos and min_tokens, so every answer would end at
// whatever point greedy decoding happened to reach the end-of-sequence
// token. The weights make that token (and the control and byte tokens)
// unreachable instead: dimension 0 of every token embedding is a positive
// constant that no layer writes to (the rows of attn_output and ffn_down
// that feed it are zero), so after the final RMS norm it is positive for
// every position, and the output rows of the unwanted tokens are -50 in
// that dimension and 0 elsewhere, while every word's row has +1 there.
// Each answer is therefore exactly max_tokens long, as vLLM's ignore_eos
// makes it.
//
// -arch qwen2 writes Qwen2's architecture instead, with a GPT-2 byte-level
// BPE vocabulary, F16 matrices and tied embeddings, and -preset
// qwen2.5-0.5b Qwen2.5-0.5B-Instruct's real shape (24 layers, 896 wide,
// 14 heads and 2 KV heads, 4864 feed-forward, 151,936 tokens: 494M
// parameters, 991 MB), for an engine on a GPU to cost what the real
// model costs: qwen2.go. The default flags write the same file as ever.
//
// Built with Ollama's own GGUF writer (fs/ggml), outside llmlab's module.
package main

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"

	"github.com/ollama/ollama/fs/ggml"
)

// benchWords are the words of llmlab bench's prompts (cmd/llmlab/bench).
var benchWords = []string{"Write", "word", "apple", "river", "stone", "cloud", "green", "paper", "music", "light",
	"table", "water", "house", "night", "bread", "chair", "glass", "field"}

func main() {
	o, err := parse(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkmodel:", err)
		os.Exit(2)
	}
	switch o.arch {
	case "llama":
		c := o.qwen2Config
		err = write(o.out, c.layers, c.width, c.heads, c.kvHeads, c.ffn, c.vocab, c.ctxLen, c.seed)
	case "qwen2":
		err = writeQwen2(o.out, o.qwen2Config)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkmodel:", err)
		os.Exit(1)
	}
}

// options are mkmodel's flags, read (the llama model takes its shape from
// qwen2Config too).
type options struct {
	arch, out string
	qwen2Config
}

func parse(args []string) (options, error) {
	fs := flag.NewFlagSet("mkmodel", flag.ExitOnError)
	out := fs.String("o", "", "the GGUF file to write (default llmlab-tiny.gguf for llama, llmlab-qwen2.gguf for qwen2, llmlab-PRESET.gguf for a preset)")
	arch := fs.String("arch", "llama", "architecture: llama (SentencePiece vocabulary, F32) or qwen2 (GPT-2 byte-level BPE vocabulary, F16 or BF16; qwen2.go)")
	preset := fs.String("preset", "", "a real model's shape, which sets the flags not given: "+strings.Join(slices.Sorted(maps.Keys(presets)), ", "))
	layers := fs.Int("layers", 2, "transformer blocks")
	width := fs.Int("width", 64, "embedding width")
	heads := fs.Int("heads", 4, "attention heads")
	kvHeads := fs.Int("kv-heads", 0, "key and value heads (default: -heads)")
	ffn := fs.Int("ffn", 128, "feed-forward width")
	vocab := fs.Int("vocab", 4096, "vocabulary size (at least 1024)")
	ctxLen := fs.Int("context", 2048, "context length")
	dtype := fs.String("dtype", "f16", "qwen2's matrices: f16 or bf16 (its norms and biases are F32)")
	seed := fs.Uint64("seed", 1, "random seed (the same seed writes the same file)")
	_ = fs.Parse(args)
	if *preset != "" {
		values, ok := presets[*preset]
		if !ok {
			return options{}, fmt.Errorf("no preset %q", *preset)
		}
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		for _, kv := range values {
			if name, value, _ := strings.Cut(kv, "="); !given[name] {
				if err := fs.Set(name, value); err != nil {
					return options{}, err
				}
			}
		}
	}
	if *kvHeads == 0 {
		*kvHeads = *heads
	}
	if *vocab < 1024 || *width%*heads != 0 || *width < 8 || *heads%*kvHeads != 0 {
		return options{}, fmt.Errorf("want -vocab >= 1024, -width a multiple of -heads, at least 8, and -heads a multiple of -kv-heads")
	}
	kind, ok := dtypes[*dtype]
	if !ok {
		return options{}, fmt.Errorf("want -dtype f16 or bf16")
	}
	o := options{arch: *arch, out: *out, qwen2Config: qwen2Config{name: "llmlab-" + *arch, layers: *layers, width: *width,
		heads: *heads, kvHeads: *kvHeads, ffn: *ffn, vocab: *vocab, ctxLen: *ctxLen, kind: kind, seed: *seed}}
	switch o.arch {
	case "llama":
		o.name = "llmlab-tiny"
		if *preset != "" {
			return options{}, fmt.Errorf("-preset %s is a qwen2 model", *preset)
		}
	case "qwen2":
		if *preset != "" {
			o.name = "llmlab-" + *preset
		}
	default:
		return options{}, fmt.Errorf("want -arch llama or qwen2")
	}
	if o.out == "" {
		o.out = o.name + ".gguf"
	}
	return o, nil
}

// presets are real models' shapes, as flag values.
var presets = map[string][]string{
	// Qwen2.5-0.5B-Instruct's config.json: 494M parameters, about 1 GB as
	// F16 (its embeddings are tied, so the LM head is token_embd). Its
	// context, 32,768, is only a ceiling: Ollama allocates num_ctx.
	"qwen2.5-0.5b": {"arch=qwen2", "layers=24", "width=896", "heads=14", "kv-heads=2", "ffn=4864", "vocab=151936", "context=32768"},
}

// Token types of GGUF's tokenizer.ggml.token_type.
const (
	typeNormal  = 1
	typeUnknown = 2
	typeControl = 3
	typeByte    = 6
)

// vocabulary returns n SentencePiece pieces, their scores and types, and
// which of them an answer may contain.
func vocabulary(n int, rng *rand.Rand) (tokens []string, scores []float32, types []int32, allowed []bool) {
	seen := map[string]bool{}
	add := func(piece string, score float32, typ int32, ok bool) {
		if seen[piece] || len(tokens) >= n {
			return
		}
		seen[piece] = true
		tokens, scores, types, allowed = append(tokens, piece), append(scores, score), append(types, typ), append(allowed, ok)
	}
	add("<unk>", 0, typeUnknown, false)
	add("<s>", 0, typeControl, false)
	add("</s>", 0, typeControl, false)
	for b := range 256 {
		add(fmt.Sprintf("<0x%02X>", b), 0, typeByte, false)
	}
	// A word and every prefix of it; a longer piece scores higher, so the
	// tokenizer merges as far as the vocabulary goes.
	word := func(w string) {
		r := []rune(w)
		for i := 1; i <= len(r); i++ {
			add(string(r[:i]), float32(i), typeNormal, true)
		}
	}
	for c := 'a'; c <= 'z'; c++ {
		word(string(c))
		word(strings.ToUpper(string(c)))
	}
	for _, w := range benchWords {
		word(w)
		word("▁" + w)
	}
	consonants, vowels := "bcdfghklmnprstvwz", "aeiou"
	for len(tokens) < n {
		var b strings.Builder
		b.WriteString("▁")
		for range 1 + rng.IntN(3) {
			b.WriteByte(consonants[rng.IntN(len(consonants))])
			b.WriteByte(vowels[rng.IntN(len(vowels))])
		}
		word(b.String())
	}
	return tokens, scores, types, allowed
}

func write(path string, layers, width, heads, kvHeads, ffn, vocab, ctxLen int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 0x11a1ab))
	tokens, scores, types, allowed := vocabulary(vocab, rng)

	normal := func(n int, std float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * std)
		}
		return v
	}
	ones := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = 1
		}
		return v
	}
	var ts []*ggml.Tensor
	// add appends a tensor; shape is GGUF's order (the fastest dimension,
	// a row's length, first).
	add := func(name string, data []float32, shape ...uint64) {
		var b bytes.Buffer
		_ = binary.Write(&b, binary.LittleEndian, data)
		ts = append(ts, &ggml.Tensor{Name: name, Kind: 0, Shape: shape, WriterTo: bytes.NewReader(b.Bytes())})
	}

	const anchor = 2.0 // dimension 0 of every embedding
	embd := normal(width*vocab, 0.5)
	output := normal(width*vocab, 1/math.Sqrt(float64(width)))
	for t := range vocab {
		embd[t*width] = anchor
		output[t*width] = 1
		if !allowed[t] {
			clear(output[t*width : (t+1)*width])
			output[t*width] = -50
		}
	}
	add("token_embd.weight", embd, uint64(width), uint64(vocab))
	add("output_norm.weight", ones(width), uint64(width))
	add("output.weight", output, uint64(width), uint64(vocab))
	w := 1 / math.Sqrt(float64(width))
	for i := range layers {
		norm := ones(width)
		norm[0] = 0 // the anchor does not feed the blocks
		add(fmt.Sprintf("blk.%d.attn_norm.weight", i), slices.Clone(norm), uint64(width))
		add(fmt.Sprintf("blk.%d.ffn_norm.weight", i), slices.Clone(norm), uint64(width))
		kvWidth := width / heads * kvHeads
		add(fmt.Sprintf("blk.%d.attn_q.weight", i), normal(width*width, w), uint64(width), uint64(width))
		for _, n := range []string{"attn_k", "attn_v"} {
			add(fmt.Sprintf("blk.%d.%s.weight", i, n), normal(width*kvWidth, w), uint64(width), uint64(kvWidth))
		}
		// Output row 0 of the blocks' projections is zero: nothing writes
		// to the anchor.
		o := normal(width*width, w)
		clear(o[:width])
		add(fmt.Sprintf("blk.%d.attn_output.weight", i), o, uint64(width), uint64(width))
		add(fmt.Sprintf("blk.%d.ffn_gate.weight", i), normal(width*ffn, w), uint64(width), uint64(ffn))
		add(fmt.Sprintf("blk.%d.ffn_up.weight", i), normal(width*ffn, w), uint64(width), uint64(ffn))
		d := normal(ffn*width, 1/math.Sqrt(float64(ffn)))
		clear(d[:ffn])
		add(fmt.Sprintf("blk.%d.ffn_down.weight", i), d, uint64(ffn), uint64(width))
	}

	kv := ggml.KV{
		"general.architecture":                   "llama",
		"general.name":                           "llmlab-tiny",
		"general.file_type":                      uint32(0), // all F32
		"llama.block_count":                      uint32(layers),
		"llama.context_length":                   uint32(ctxLen),
		"llama.embedding_length":                 uint32(width),
		"llama.feed_forward_length":              uint32(ffn),
		"llama.attention.head_count":             uint32(heads),
		"llama.attention.head_count_kv":          uint32(kvHeads),
		"llama.attention.layer_norm_rms_epsilon": float32(1e-5),
		"llama.rope.freq_base":                   float32(10000),
		"llama.rope.dimension_count":             uint32(width / heads),
		"llama.vocab_size":                       uint32(vocab),
		"tokenizer.ggml.model":                   "llama",
		"tokenizer.ggml.tokens":                  tokens,
		"tokenizer.ggml.scores":                  scores,
		"tokenizer.ggml.token_type":              types,
		"tokenizer.ggml.unknown_token_id":        uint32(0),
		"tokenizer.ggml.bos_token_id":            uint32(1),
		"tokenizer.ggml.eos_token_id":            uint32(2),
		"tokenizer.ggml.add_bos_token":           true,
		"tokenizer.ggml.add_eos_token":           false,
	}
	return writeGGUF(path, kv, ts)
}

// writeGGUF writes the model to path through a temporary file, so that a
// file at path is always whole.
func writeGGUF(path string, kv ggml.KV, ts []*ggml.Tensor) error {
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	if err := ggml.WriteGGUF(f, kv, ts); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
