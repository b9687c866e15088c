package main

import (
	"crypto/sha256"
	"encoding/base64"
	"testing"
	"time"
)

// testCerts are a test CA and a leaf certificate it signed, written as PEM
// files to a test's temporary directory.
type testCerts struct{ *localCerts }

// leafSPKIHash is the base64 SHA-256 of the leaf's SubjectPublicKeyInfo,
// the form Chromium's --ignore-certificate-errors-spki-list takes.
func (c *testCerts) leafSPKIHash() string {
	sum := sha256.Sum256(c.Leaf.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// newTestCerts makes a CA and a leaf for names (ECDSA P-256), valid for a
// day, and writes ca.pem, cert.pem (leaf then CA) and key.pem to a
// temporary directory.
func newTestCerts(t *testing.T, names ...string) *testCerts {
	t.Helper()
	c, err := writeLocalCerts(t.TempDir(), 24*time.Hour, names...)
	if err != nil {
		t.Fatal(err)
	}
	return &testCerts{c}
}
