package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/lockd-io/lockd/locks"
	"github.com/lockd-io/lockd/node"
	"github.com/lockd-io/lockd/store"
	"github.com/rs/zerolog"
)

// snapshotFormat names the backup file format in its header line.
const snapshotFormat = "lockd-snapshot"

// snapshotHeader is the first line of a backup file: JSON, so that a person
// can tell what a file is with head -1. The table's encoding follows.
type snapshotHeader struct {
	Format   string `json:"format"`
	Version  int    `json:"version"`
	Revision uint64 `json:"revision,string"`
	Size     int    `json:"size"`
	SHA256   string `json:"sha256"`
}

func snapshotCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "save" && args[0] != "restore") {
		return usageError{errors.New("usage: lockd snapshot save FILE | lockd snapshot restore FILE --name NAME --data-dir DIR --initial-cluster NAME=URL,…")}
	}
	if args[0] == "save" {
		return snapshotSave(args[1:], stdout, stderr)
	}
	return snapshotRestore(args[1:], stdout, stderr)
}

// snapshotSave copies the table of a live cluster into a file, atomically:
// the file appears, complete and synced, or not at all.
func snapshotSave(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("snapshot save", "snapshot save FILE", stderr)
	cf.register(fs)
	pos, _, err := cf.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("usage: lockd snapshot save FILE")}
	}
	path := pos[0]
	c, ctx, done, err := cf.oneShot()
	if err != nil {
		return err
	}
	defer done()
	var data bytes.Buffer
	rev, sum, err := c.Snapshot(ctx, &data)
	if err != nil {
		return describeErr(err)
	}
	hdr, _ := json.Marshal(snapshotHeader{Format: snapshotFormat, Version: 1, Revision: rev, Size: data.Len(), SHA256: hex.EncodeToString(sum[:])})
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	w.Write(hdr)
	w.WriteByte('\n')
	w.Write(data.Bytes())
	if err := w.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	if cf.output == "json" {
		return printJSON(stdout, map[string]any{"file": path, "revision": fmt.Sprint(rev), "bytes": data.Len(), "sha256": hex.EncodeToString(sum[:])})
	}
	fmt.Fprintf(stdout, "saved revision %d (%d bytes, sha256 %x) to %s\n", rev, data.Len(), sum, path)
	return nil
}

// readSnapshotFile reads and checks a backup file.
func readSnapshotFile(path string) (snapshotHeader, []byte, error) {
	var hdr snapshotHeader
	f, err := os.Open(path)
	if err != nil {
		return hdr, nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	line, err := r.ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &hdr) != nil || hdr.Format != snapshotFormat {
		return hdr, nil, fmt.Errorf("%s is not a lockd snapshot (no header line)", path)
	}
	if hdr.Version != 1 {
		return hdr, nil, fmt.Errorf("%s is a version %d snapshot; this lockd reads version 1", path, hdr.Version)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return hdr, nil, err
	}
	sum := sha256.Sum256(data)
	if len(data) != hdr.Size || hex.EncodeToString(sum[:]) != hdr.SHA256 {
		return hdr, nil, fmt.Errorf("%s is damaged: %d bytes with sha256 %x, the header says %d bytes with sha256 %s", path, len(data), sum, hdr.Size, hdr.SHA256)
	}
	return hdr, data, nil
}

// snapshotRestore seeds the data dir of one member of a new cluster with a
// backup. Run it for every member, with the same file and initial cluster,
// then start each with lockd serve.
func snapshotRestore(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot restore", "snapshot restore FILE --name NAME --data-dir DIR --initial-cluster NAME=URL,…", stderr)
	name := fs.String("name", "default", "the member this data dir is for")
	dataDir := fs.String("data-dir", "lockd-data", "the new member's data dir (must not exist, or be empty)")
	initial := fs.String("initial-cluster", "", "every member of the new cluster as NAME=URL,… (default: this member alone at http://127.0.0.1:7070)")
	output := fs.String("output", "text", "text or json")
	pos, _, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("usage: lockd snapshot restore FILE --name NAME --data-dir DIR --initial-cluster NAME=URL,…")}
	}
	if *initial == "" {
		*initial = *name + "=http://127.0.0.1:7070"
	}
	peers, err := node.ParseInitialCluster(*initial)
	if err != nil {
		return usageError{err}
	}
	hdr, data, err := readSnapshotFile(pos[0])
	if err != nil {
		return err
	}
	state, err := locks.Reseed(data)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	if entries, err := os.ReadDir(*dataDir); err == nil && len(entries) > 0 {
		return fmt.Errorf("data dir %s is not empty; restore seeds a new member", *dataDir)
	}
	st, err := store.Open(*dataDir, store.Options{Logger: zerolog.Nop()})
	if err != nil {
		return err
	}
	if err := node.Seed(st, *name, peers, state); err != nil {
		st.Close()
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	if *output == "json" {
		return printJSON(stdout, map[string]any{"data_dir": *dataDir, "name": *name, "revision": fmt.Sprint(hdr.Revision), "members": len(peers)})
	}
	fmt.Fprintf(stdout, "restored revision %d into %s as member %s of a new %d-member cluster; start it with lockd serve --name %s --data-dir %s\n",
		hdr.Revision, *dataDir, *name, len(peers), *name, *dataDir)
	return nil
}
