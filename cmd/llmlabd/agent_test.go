package main_test

import (
	"io"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// askAgent makes one HAProxy agent check and returns the maxconn
// advertised.
func askAgent(t *testing.T, addr string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^up ready maxconn:(\d+)\n$`).FindSubmatch(line)
	if m == nil {
		t.Fatalf("agent answer %q, want \"up ready maxconn:N\"", line)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// llmlabd answers HAProxy's agent check on balancer.agent_listen with what
// the host can take: the in-flight limit while its engine is cold, more
// (the queue the objective allows) once it is warm. Checks start nothing.
func TestBalancerAgent(t *testing.T) {
	agentAddr := freeAddr(t)
	// A fixed limit: the agent's answer is the limit in force, and with the
	// default (the engine model's) a fresh llmlabd starts at min_inflight.
	cfg := writeConfig(t, managedSimConfig(t, "", "concurrency = \"fixed\"\nmax_inflight = 8\n", "[balancer]\nagent_listen = \""+agentAddr+"\"\n"))
	d := start(t, nil, nil, "--config", cfg)
	for range 3 {
		if n := askAgent(t, agentAddr); n != 8 {
			t.Fatalf("cold engine: maxconn %d, want the in-flight limit, 8", n)
		}
	}
	if st := fetch(t, d.metrics+"/status"); !regexp.MustCompile(`"state":\s*"stopped"`).MatchString(st) {
		t.Fatalf("agent checks started the engine:\n%s", st)
	}
	if resp, body := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":3}`); resp.StatusCode != 200 {
		t.Fatalf("request: %d %s", resp.StatusCode, body)
	}
	warm := askAgent(t, agentAddr)
	if warm <= 8 {
		t.Fatalf("warm engine: maxconn %d, want the limit (8) and a queue", warm)
	}
	if got := metricSum(t, d.metrics+"/metrics", "llmlab_balancer_agent_maxconn"); got != float64(warm) {
		t.Errorf("llmlab_balancer_agent_maxconn %v, want the last answer, %d", got, warm)
	}
	if got := metricSum(t, d.metrics+"/metrics", "llmlab_balancer_agent_checks_total"); got != 4 {
		t.Errorf("llmlab_balancer_agent_checks_total %v, want 4", got)
	}
}
