package sim

import (
	"hash/fnv"
	"unicode"
	"unicode/utf8"
)

// CountTokens approximates Qwen2.5's byte-level BPE on text: a word with
// its leading space is one token (as " word" is in Qwen's vocabulary), a
// run of digits or punctuation is one token per three characters, and
// words longer than eight bytes cost one more token per eight bytes. The
// benchmark's prompt ("Write" and 199 times " word") is exactly 200 tokens,
// as with the real tokenizer.
func CountTokens(text string) int {
	n := 0
	for _, p := range pieces(text) {
		n += pieceTokens(p)
	}
	return n
}

// Tokenize returns stable token ids for text (hashes of its pieces; the
// count is what matters).
func Tokenize(text string) []int {
	var ids []int
	for _, p := range pieces(text) {
		h := fnv.New32a()
		h.Write([]byte(p))
		base := int(h.Sum32() % 151000)
		for i := 0; i < pieceTokens(p); i++ {
			ids = append(ids, (base+i)%151643)
		}
	}
	return ids
}

func pieceTokens(p string) int {
	r, _ := utf8.DecodeRuneInString(p)
	if r == ' ' && len(p) > 1 {
		r, _ = utf8.DecodeRuneInString(p[1:])
	}
	switch {
	case unicode.IsLetter(r):
		return 1 + (len(p)-1)/8
	default:
		return (len(p) + 2) / 3
	}
}

// pieces splits text like GPT-2-style pre-tokenizers: an optional space
// followed by letters, digits, or other symbols; other whitespace alone.
func pieces(text string) []string {
	var out []string
	i := 0
	for i < len(text) {
		start := i
		r, size := utf8.DecodeRuneInString(text[i:])
		if r == ' ' && i+size < len(text) {
			next, _ := utf8.DecodeRuneInString(text[i+size:])
			if !unicode.IsSpace(next) {
				i += size
				r, size = next, utf8.RuneLen(next)
			}
		}
		class := runeClass(r)
		i += size
		for i < len(text) {
			r2, s2 := utf8.DecodeRuneInString(text[i:])
			if runeClass(r2) != class {
				break
			}
			i += s2
		}
		out = append(out, text[start:i])
	}
	return out
}

func runeClass(r rune) int {
	switch {
	case unicode.IsLetter(r):
		return 1
	case unicode.IsDigit(r):
		return 2
	case unicode.IsSpace(r):
		return 3
	default:
		return 4
	}
}

// chatTemplateTokens is what Qwen2.5's chat template adds: the default
// system message when none is given (about 20 tokens), then
// "<|im_start|>role\n ... <|im_end|>\n" around each message (5 tokens),
// and "<|im_start|>assistant\n" (3 tokens) to start the answer.
func chatTemplateTokens(messages int, hasSystem bool) int {
	n := 5*messages + 3
	if !hasSystem {
		n += 20 + 5
	}
	return n
}

// outputWords are the deterministic generated text, one token each.
var outputWords = []string{" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog"}
