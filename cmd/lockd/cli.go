package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	lockd "github.com/lockd-io/lockd/clients/go"
)

// Exit codes of the client commands, besides a command's own status.
const (
	exitError = 1
	exitUsage = 2
	// exitNotAcquired: --skip-if-held found the lock taken, or --wait ran
	// out (EX_TEMPFAIL: try again later).
	exitNotAcquired = 75
)

// exitError carries a specific exit code out of a command.
type exitCodeError struct {
	code int
	err  error
}

func (e exitCodeError) Error() string { return e.err.Error() }

// clientFlags are the flags every client command takes.
type clientFlags struct {
	endpoints string
	ttl       time.Duration
	output    string
	timeout   time.Duration

	caFile, certFile, keyFile string
	tokenFile                 string
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	def := os.Getenv("LOCKD_ENDPOINTS")
	if def == "" {
		def = "127.0.0.1:7070"
	}
	fs.StringVar(&c.endpoints, "endpoints", def, "the cluster's nodes, host:port,… (env LOCKD_ENDPOINTS)")
	fs.DurationVar(&c.ttl, "ttl", lockd.DefaultTTL, "lease TTL")
	fs.StringVar(&c.output, "output", "text", "text or json")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "deadline of each one-shot call")
	fs.StringVar(&c.caFile, "ca-file", os.Getenv("LOCKD_CA_FILE"), "CA certificates (PEM) to trust the nodes' certificates by; turns TLS on (env LOCKD_CA_FILE)")
	fs.StringVar(&c.certFile, "cert-file", os.Getenv("LOCKD_CERT_FILE"), "client certificate (PEM), for clusters that require one (env LOCKD_CERT_FILE)")
	fs.StringVar(&c.keyFile, "key-file", os.Getenv("LOCKD_KEY_FILE"), "the private key of --cert-file (env LOCKD_KEY_FILE)")
	fs.StringVar(&c.tokenFile, "token-file", os.Getenv("LOCKD_TOKEN_FILE"), "file holding the bearer token to send (env LOCKD_TOKEN_FILE, or the token itself in LOCKD_TOKEN)")
}

func (c *clientFlags) validate() error {
	if c.output != "text" && c.output != "json" {
		return usageError{fmt.Errorf("--output must be text or json, not %q", c.output)}
	}
	if c.ttl <= 0 {
		return usageError{errors.New("--ttl must be positive")}
	}
	return nil
}

func (c *clientFlags) client() (*lockd.Client, error) {
	var opts []lockd.Option
	if c.caFile != "" || c.certFile != "" {
		cfg, err := c.tlsConfig()
		if err != nil {
			return nil, usageError{err}
		}
		opts = append(opts, lockd.WithTLS(cfg))
	}
	token := os.Getenv("LOCKD_TOKEN")
	if c.tokenFile != "" {
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("--token-file: %w", err)}
		}
		token = strings.TrimSpace(string(b))
	}
	if token != "" {
		opts = append(opts, lockd.WithToken(token))
	}
	return lockd.New(strings.Split(c.endpoints, ","), opts...)
}

func (c *clientFlags) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.caFile != "" {
		certs, err := loadCAs(c.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		cfg.RootCAs = certPool(certs)
	}
	if (c.certFile == "") != (c.keyFile == "") {
		return nil, errors.New("--cert-file and --key-file go together")
	}
	if c.certFile != "" {
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// parse parses a client command's arguments (as parseArgs) and checks the
// client flags.
func (c *clientFlags) parse(fs *flag.FlagSet, args []string) (positional, command []string, err error) {
	if positional, command, err = parseArgs(fs, args); err != nil {
		return nil, nil, err
	}
	return positional, command, c.validate()
}

// oneShot connects for a command of one call: a client and a context
// bounded by --timeout, both released by done.
func (c *clientFlags) oneShot() (_ *lockd.Client, _ context.Context, done func(), _ error) {
	cl, err := c.client()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	return cl, ctx, func() { cancel(); cl.Close() }, nil
}

// parseArgs parses flags given before or after the positional arguments;
// everything after "--" is returned apart, untouched (the command to run).
func parseArgs(fs *flag.FlagSet, args []string) (positional, command []string, err error) {
	for i, a := range args {
		if a == "--" {
			args, command = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, err
			}
			return nil, nil, usageError{err}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, command, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: lockd %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// describeErr makes an API error read well on a terminal.
func describeErr(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return fmt.Errorf("%s: %s", ce.Code(), ce.Message())
	}
	return err
}
