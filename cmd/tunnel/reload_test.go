package main

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// A config file being written in place is not applied until it has stayed
// as it is for a whole poll: half a token list would otherwise disconnect
// the agents whose tokens are in the other half, for good.
func TestConfigReloadWaitsForTheFileToSettle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.yaml")
	writeFile(t, path, "tokens:\n  - name: a\n    token: token-a-0123456789\n")
	r := &configReloader{path: path, log: slog.New(slog.DiscardHandler)}
	if _, err := r.load(stampOf(path)); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.settled(); ok {
		t.Fatal("an unchanged file was reloaded")
	}

	// The editor truncates and writes the first half: seen, not applied.
	writeFile(t, path, "tokens:\n  - name: a\n")
	if _, ok := r.settled(); ok {
		t.Fatal("a file that had just changed was reloaded at once")
	}
	// It writes the rest before the next poll: a change again (in size, at
	// least), still waiting.
	writeFile(t, path, "tokens:\n  - name: a\n    token: token-a-0123456789\n  - name: b\n    token: token-b-0123456789\n")
	if _, ok := r.settled(); ok {
		t.Fatal("a file that was still changing was reloaded")
	}
	// Unchanged since the last poll: now it is read.
	now, ok := r.settled()
	if !ok {
		t.Fatal("a settled change was not reloaded")
	}
	file, err := r.load(now)
	if err != nil || len(file.Tokens) != 2 {
		t.Fatalf("load: %v, %d tokens", err, len(file.Tokens))
	}
	if _, ok := r.settled(); ok {
		t.Fatal("the loaded file was reloaded again")
	}
}

// A file that changes while it is read is not applied; the poll then sees
// the change and reads it again once it has settled.
func TestConfigReloadRefusesAReadDuringAWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "relay.yaml")
	writeFile(t, path, "tokens:\n  - name: a\n    token: token-a-0123456789\n")
	r := &configReloader{path: path, log: slog.New(slog.DiscardHandler)}
	before := stampOf(path)
	// What the read sees differs from the stamp taken before it (in size:
	// a file system's clock may not tell two quick writes apart).
	writeFile(t, path, "tokens:\n  - name: bob\n    token: token-b-0123456789\n")
	if _, err := r.load(before); err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("load of a file that changed during the read: %v", err)
	}
	r.settled()
	if _, ok := r.settled(); !ok {
		t.Fatal("the file was not read again after the refused read")
	}
}
