package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

// example is one command of the README with the answer it shows.
type example struct {
	line int
	cmd  string
	want string // JSON whose fields the answer must contain; "" = any success
}

// readmeExamples reads the curl and grpcurl commands of the README's "Using
// it" section, with the "# =>" answer after each.
func readmeExamples(t *testing.T) []example {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "## Using it")
	end := strings.Index(text, "Other calls:")
	if start < 0 || end < start {
		t.Fatal(`README has no "## Using it" section ending at "Other calls:"`)
	}
	first := strings.Count(text[:start], "\n") + 1
	lines := strings.Split(text[start:end], "\n")
	var out []example
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "curl ") && !strings.HasPrefix(l, "grpcurl ") {
			continue
		}
		ex := example{line: first + i}
		cmd := l
		for strings.HasSuffix(cmd, `\`) && i+1 < len(lines) {
			i++
			cmd = strings.TrimSuffix(cmd, `\`) + strings.TrimSpace(lines[i])
		}
		ex.cmd = cmd
		if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "# => ") {
			ex.want = strings.TrimPrefix(lines[i+1], "# => ")
		}
		out = append(out, ex)
	}
	return out
}

// contains reports whether got has every field of want, recursively.
func contains(got, want any) bool {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			if !contains(g[k], wv) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(got, want)
	}
}

// The README's curl and grpcurl examples work as written, against a fresh
// `lockd serve` with no flags.
func TestREADMEExamples(t *testing.T) {
	examples := readmeExamples(t)
	if len(examples) < 10 {
		t.Fatalf("found only %d examples in the README", len(examples))
	}
	_, err := exec.LookPath("grpcurl")
	haveGrpcurl := err == nil
	if !haveGrpcurl && os.Getenv("LOCKD_REQUIRE_GRPCURL") != "" {
		t.Fatal("grpcurl is not on PATH and LOCKD_REQUIRE_GRPCURL is set")
	}
	startProc(t, "readme", t.TempDir(), "127.0.0.1:7070", "serve")
	eventually(t, 15*time.Second, "node leading", func() error {
		out, err := exec.Command("curl", "-sf", "-H", "Content-Type: application/json", "-d", "{}",
			"http://127.0.0.1:7070/lockd.v1.ClusterService/Status").Output()
		if err != nil || !strings.Contains(string(out), `"state":"leader"`) {
			return fmt.Errorf("status %s (%v)", out, err)
		}
		return nil
	})
	for _, ex := range examples {
		if strings.HasPrefix(ex.cmd, "grpcurl ") && !haveGrpcurl {
			t.Logf("README.md:%d: grpcurl is not installed; not run", ex.line)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, "sh", "-c", ex.cmd).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("README.md:%d: %s\nfailed: %v\n%s", ex.line, ex.cmd, err, out)
		}
		var got any
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("README.md:%d: %s\nanswered no JSON: %s", ex.line, ex.cmd, out)
		}
		if m, ok := got.(map[string]any); ok && m["code"] != nil {
			t.Fatalf("README.md:%d: %s\nanswered an error: %s", ex.line, ex.cmd, out)
		}
		if ex.want == "" {
			continue
		}
		var want any
		if err := json.Unmarshal([]byte(ex.want), &want); err != nil {
			t.Fatalf("README.md:%d: the answer shown is not JSON: %v", ex.line, err)
		}
		if !contains(got, want) {
			t.Errorf("README.md:%d: %s\nanswered %s\nthe README shows %s", ex.line, ex.cmd, strings.Join(strings.Fields(string(out)), " "), ex.want)
		}
	}
}
