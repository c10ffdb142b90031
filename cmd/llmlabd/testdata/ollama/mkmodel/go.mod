module github.com/llmlab/llmlab/cmd/llmlabd/testdata/ollama/mkmodel

go 1.26

require github.com/ollama/ollama v0.17.4

require golang.org/x/sync v0.17.0 // indirect
