package main

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/lockd-io/lockd"

type listedPackage struct {
	ImportPath string
	Dir        string
	Doc        string
	Name       string
	Deps       []string
	Imports    []string
	GoFiles    []string
}

func listPackages(t *testing.T) []listedPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p listedPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// The architecture in DESIGN.md, as forbidden dependencies (direct or not)
// per package. Arrows go one way; node and locks meet only in cmd/lockd.
var forbiddenDeps = map[string][]string{
	"locks":      {"go.etcd.io/raft", "github.com/cockroachdb/pebble", "net/http", "connectrpc.com", "github.com/rs/zerolog", module + "/node", module + "/store", module + "/server", module + "/election"},
	"election":   {"go.etcd.io/raft", "github.com/cockroachdb/pebble", "net/http", "connectrpc.com", module + "/node", module + "/store", module + "/server"},
	"store":      {module + "/locks", module + "/election", module + "/node", module + "/server", "connectrpc.com"},
	"node":       {module + "/locks", module + "/election", module + "/server"},
	"server":     {module + "/node", module + "/store", "go.etcd.io/raft", "github.com/cockroachdb/pebble"},
	"clients/go": {module + "/locks", module + "/election", module + "/node", module + "/store", module + "/server", "go.etcd.io/raft", "github.com/cockroachdb/pebble", "github.com/rs/zerolog"},
	"benchmarks": {module + "/node", module + "/store", module + "/locks", module + "/server"},
}

func TestDependencyRules(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, dep := range p.Imports {
			if strings.HasPrefix(dep, module+"/cmd/") {
				t.Errorf("%s imports %s: nothing may import cmd/", p.ImportPath, dep)
			}
		}
		for prefix, banned := range forbiddenDeps {
			if rel != prefix && !strings.HasPrefix(rel, prefix+"/") {
				continue
			}
			for _, dep := range p.Deps {
				for _, b := range banned {
					if dep == b || strings.HasPrefix(dep, b+"/") || (strings.HasSuffix(b, ".com") && strings.HasPrefix(dep, b)) {
						t.Errorf("%s depends on %s, which %s must not", p.ImportPath, dep, prefix)
					}
				}
			}
		}
	}
}

// Every package says what it is for.
func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no package doc comment", p.ImportPath)
		}
	}
}

// The lock table is deterministic: no clock, no randomness, no goroutines.
func TestLocksIsDeterministic(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.ImportPath != module+"/locks" && !strings.HasPrefix(p.ImportPath, module+"/locks/") &&
			p.ImportPath != module+"/election" {
			continue
		}
		for _, dep := range p.Imports {
			if dep == "math/rand" || dep == "math/rand/v2" || dep == "crypto/rand" {
				t.Errorf("%s imports %s", p.ImportPath, dep)
			}
		}
		for _, f := range p.GoFiles {
			path := filepath.Join(p.Dir, f)
			file, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.GoStmt:
					t.Errorf("%s: go statement in deterministic code", path)
				case *ast.SelectorExpr:
					if x, ok := n.X.(*ast.Ident); ok && x.Name == "time" && (n.Sel.Name == "Now" || n.Sel.Name == "Since" || n.Sel.Name == "Until") {
						t.Errorf("%s: time.%s in deterministic code", path, n.Sel.Name)
					}
				}
				return true
			})
		}
	}
}
