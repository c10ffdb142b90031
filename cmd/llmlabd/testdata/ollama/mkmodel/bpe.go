package main

import (
	"math/rand/v2"
	"strings"
)

// byteRunes is GPT-2's byte-to-unicode alphabet: byte b of a text is the
// rune byteRunes[b] in a byte-level BPE token. Printable bytes stand for
// themselves; the others (space, control characters, 0x7f-0xa0, 0xad)
// are moved to U+0100 on, so that a space is 'Ġ' (U+0120) and a newline
// 'Ċ' (U+010A).
var byteRunes = func() (r [256]rune) {
	n := 0
	for b := range 256 {
		if b >= '!' && b <= '~' || b >= 0xa1 && b <= 0xac || b >= 0xae {
			r[b] = rune(b)
		} else {
			r[b] = rune(256 + n)
			n++
		}
	}
	return r
}()

// byteLevel returns s in byteRunes' alphabet.
func byteLevel(s string) string {
	var b strings.Builder
	for i := range len(s) {
		b.WriteRune(byteRunes[s[i]])
	}
	return b.String()
}

// The chat template's special tokens, Qwen2.5's.
const (
	endOfText = "<|endoftext|>"
	imStart   = "<|im_start|>"
	imEnd     = "<|im_end|>"
)

// bpeVocab is a GPT-2-style byte-level BPE vocabulary, as Qwen2's is.
type bpeVocab struct {
	tokens  []string
	types   []int32
	merges  []string // "left right", by rank
	allowed []bool   // which tokens an answer may contain
	// ids of the special tokens
	endOfText, imStart, imEnd int
}

// mergedWords are the words the merges build into one token each, with
// and without a leading space: the bench prompts' words and the chat
// template's roles.
func mergedWords() []string {
	words := append(append([]string{}, benchWords...), "user", "assistant", "system")
	var out []string
	for _, w := range words {
		out = append(out, byteLevel(w), byteLevel(" "+w))
	}
	return out
}

// bpeVocabulary returns a vocabulary of n tokens: the 256 byte tokens
// (ids 0-255, in GPT-2's order), the tokens of merges learnt from
// mergedWords as BPE training learns them (so that encoding, which applies
// merges by rank, makes each word one token), filler words (' ' and one to
// three consonant-vowel syllables, which no merge reaches but which decode
// as any token does) up to n-3, and the control tokens <|endoftext|>,
// <|im_start|> and <|im_end|> as the last three.
//
// An answer may contain only tokens of ASCII letters, with or without a
// leading space: neither the control tokens nor a byte token that would
// leave a UTF-8 sequence unfinished or spell a stop string such as
// "<|im_end|>" piece by piece.
func bpeVocabulary(n int, rng *rand.Rand) bpeVocab {
	var v bpeVocab
	seen := map[string]bool{}
	add := func(token string, typ int32) {
		if seen[token] || len(v.tokens) >= n {
			return
		}
		seen[token] = true
		v.tokens, v.types, v.allowed = append(v.tokens, token), append(v.types, typ), append(v.allowed, typ == typeNormal && letters(token))
	}
	for b := range 256 {
		if byteRunes[b] == rune(b) {
			add(string(byteRunes[b]), typeNormal)
		}
	}
	for b := range 256 {
		if byteRunes[b] != rune(b) {
			add(string(byteRunes[b]), typeNormal)
		}
	}
	for _, m := range trainMerges(mergedWords()) {
		v.merges = append(v.merges, m[0]+" "+m[1])
		add(m[0]+m[1], typeNormal)
	}
	consonants, vowels := "bcdfghklmnprstvwz", "aeiou"
	for len(v.tokens) < n-3 {
		var b strings.Builder
		b.WriteRune(byteRunes[' '])
		for range 1 + rng.IntN(3) {
			b.WriteByte(consonants[rng.IntN(len(consonants))])
			b.WriteByte(vowels[rng.IntN(len(vowels))])
		}
		add(b.String(), typeNormal)
	}
	v.endOfText, v.imStart, v.imEnd = len(v.tokens), len(v.tokens)+1, len(v.tokens)+2
	add(endOfText, typeControl)
	add(imStart, typeControl)
	add(imEnd, typeControl)
	return v
}

// letters says whether a byte-level token is ASCII letters, after a space
// or not.
func letters(token string) bool {
	token = strings.TrimPrefix(token, string(byteRunes[' ']))
	if token == "" {
		return false
	}
	for _, r := range token {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// trainMerges learns BPE merges from words (in byteRunes' alphabet, each
// once) until every word is one symbol: each round merges the most
// frequent adjacent pair (the first seen of equals) wherever it occurs,
// left to right.
func trainMerges(words []string) [][2]string {
	seqs := make([][]string, len(words))
	for i, w := range words {
		for _, r := range w {
			seqs[i] = append(seqs[i], string(r))
		}
	}
	var merges [][2]string
	for {
		counts := map[[2]string]int{}
		var order [][2]string
		for _, s := range seqs {
			for i := range len(s) - 1 {
				p := [2]string{s[i], s[i+1]}
				if counts[p] == 0 {
					order = append(order, p)
				}
				counts[p]++
			}
		}
		if len(order) == 0 {
			return merges
		}
		best := order[0]
		for _, p := range order {
			if counts[p] > counts[best] {
				best = p
			}
		}
		merges = append(merges, best)
		for k, s := range seqs {
			var out []string
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, best[0]+best[1])
					i++
				} else {
					out = append(out, s[i])
				}
			}
			seqs[k] = out
		}
	}
}
