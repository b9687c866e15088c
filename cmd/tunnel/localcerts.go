package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// localCerts are a throwaway CA and a leaf certificate it signed, written as
// PEM files into a directory: what `tunnel bench --tls` serves its paths
// with, and what the tests use.
type localCerts struct {
	CAFile   string // the CA
	CertFile string // the leaf, then the CA
	KeyFile  string // the leaf's key (PKCS #8)
	Pool     *x509.CertPool
	Leaf     *x509.Certificate
}

// writeLocalCerts makes a CA and a leaf for names (ECDSA P-256, the
// cheapest handshake), valid from an hour ago for validFor, and writes
// ca.pem, cert.pem and key.pem into dir.
func writeLocalCerts(dir string, validFor time.Duration, names ...string) (*localCerts, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("a certificate needs at least one name")
	}
	now := time.Now()
	caKey, caDER, ca, err := issue(&x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tunnel local CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, nil, nil)
	if err != nil {
		return nil, err
	}
	leafKey, leafDER, leaf, err := issue(&x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		return nil, err
	}

	c := &localCerts{
		CAFile:   filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "cert.pem"),
		KeyFile:  filepath.Join(dir, "key.pem"),
		Pool:     x509.NewCertPool(),
		Leaf:     leaf,
	}
	c.Pool.AddCert(ca)
	for _, f := range []struct {
		path, typ string
		ders      [][]byte
	}{
		{c.CAFile, "CERTIFICATE", [][]byte{caDER}},
		{c.CertFile, "CERTIFICATE", [][]byte{leafDER, caDER}},
		{c.KeyFile, "PRIVATE KEY", [][]byte{keyDER}},
	} {
		var data []byte
		for _, der := range f.ders {
			data = append(data, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: der})...)
		}
		if err := os.WriteFile(f.path, data, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f.path, err)
		}
	}
	return c, nil
}

// issue makes a key and a certificate for it from tmpl, signed by parent
// with parentKey, or self-signed when parent is nil.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return key, der, cert, nil
}
