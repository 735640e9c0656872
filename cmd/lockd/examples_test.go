package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The programs in examples/ run to completion against a node, as the README
// says.
func TestExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example programs")
	}
	_, addr := startOne(t)
	bin := t.TempDir()
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"mutex", []string{"stock left: 0"}},
		{"leader", []string{"job-1", "job-2", "job-3", "running the report", "[observer]", "no leader"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exe := filepath.Join(bin, tc.name)
			if out, err := exec.Command("go", "build", "-o", exe, "../../examples/"+tc.name).CombinedOutput(); err != nil {
				t.Fatalf("building: %v\n%s", err, out)
			}
			out, err := exec.Command(exe, "--endpoints", addr).CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
