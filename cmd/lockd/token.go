package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/lockd-io/lockd/server"
)

// tokenCmd makes tokens for serve --token-file.
func tokenCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "new" {
		return usageError{errors.New("usage: lockd token new NAME [--role client|admin] [--prefixes P,...|*]")}
	}
	fs := newFlagSet("token new", "token new NAME --prefixes P,...|* [--role client|admin]", stderr)
	role := fs.String("role", "client", "client or admin")
	prefixes := fs.String("prefixes", "", "comma-separated lock name prefixes the token may touch, or * for every name (required)")
	output := fs.String("output", "text", "text or json")
	pos, _, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	switch {
	case len(pos) != 1:
		return usageError{errors.New("token new takes one NAME")}
	case *prefixes == "":
		return usageError{errors.New("--prefixes is required: the names the token may touch (* for all)")}
	case *output != "text" && *output != "json":
		return usageError{fmt.Errorf("--output must be text or json, not %q", *output)}
	}
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return err
	}
	token := hex.EncodeToString(secret)
	sum := sha256.Sum256([]byte(token))
	line := fmt.Sprintf("%s %s %s sha256:%s", pos[0], *role, *prefixes, hex.EncodeToString(sum[:]))
	// The server's own parser judges the line, so that what this prints is
	// what serve accepts.
	if _, err := server.ParseTokens(strings.NewReader(line)); err != nil {
		return usageError{errors.New(strings.TrimPrefix(err.Error(), "line 1: "))}
	}
	if *output == "json" {
		return printJSON(stdout, map[string]string{"token": token, "line": line})
	}
	fmt.Fprintf(stdout, "token: %s\nline:  %s\n", token, line)
	fmt.Fprintln(stderr, "Give the token to its client (lockd.WithToken, --token-file, LOCKD_TOKEN); add the line to the server's --token-file, then send it SIGHUP. The line holds only the token's hash.")
	return nil
}
