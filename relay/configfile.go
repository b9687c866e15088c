package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/internal/yamlconf"
)

// FileConfig is what a relay configuration file holds: the agent tokens and
// the edge limits. The file is YAML:
//
//	tokens:
//	  - name: alice                 # default token-N by position
//	    sha256: 9f86d0…0a08         # hex SHA-256 of the token; or token: <the token>
//	    names: ["alice-*"]          # patterns it may claim; default any
//	    reserved: [alice]           # names only it may claim
//	    max_tunnels: 3              # default limits.max_tunnels_per_token
//	limits:
//	  max_tunnels_per_token: 10
//	  max_streams_per_tunnel: 100
//	  conn_rate_per_ip: 50          # new connections per second; -1: no limit
//	  conn_rate_loopback: false
//	  response_header_timeout: 60s
//	  auth_failures_per_minute: 10  # wrong tokens, and apart from them wrong visitor passwords
//
// Every key is optional; limits left out, or 0, take Limits' defaults.
type FileConfig struct {
	Tokens []Token
	Limits Limits
	// Warnings are problems that do not stop the relay, such as clear-text
	// tokens in a file other users can read.
	Warnings []string
}

// maxConfigSize bounds a configuration file; real ones are a few KiB.
const maxConfigSize = 1 << 20

// LoadConfigFile reads and checks the configuration file at path. Its
// errors are one line, start with the file's name and line, and never
// contain a token.
func LoadConfigFile(path string) (*FileConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	cfg, err := ParseConfig(filepath.Base(path), data)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o004 != 0 && holdsSecrets(cfg.Tokens) {
		cfg.Warnings = append(cfg.Warnings, fmt.Sprintf(
			"%s holds clear-text tokens and other users can read it (mode %04o): chmod 600 it, or store each token as sha256: (printf %%s TOKEN | sha256sum)",
			path, fi.Mode().Perm()))
	}
	return cfg, nil
}

func holdsSecrets(tokens []Token) bool {
	for _, t := range tokens {
		if t.Secret != "" {
			return true
		}
	}
	return false
}

// CheckTokens reports whether tokens would be accepted by New and
// SetTokens, e.g. to check tokens from a command line before the relay
// starts. An empty token is an error, never "auth off".
func CheckTokens(tokens []Token) error {
	_, err := newTokenSet(tokens)
	return err
}

// ParseConfig parses a configuration file's contents; name is used in
// errors ("relay.yaml:4: …"). Unknown keys are errors, and the tokens are
// checked as New checks them.
func ParseConfig(name string, data []byte) (*FileConfig, error) {
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("%s: larger than %d bytes; is it the right file?", name, maxConfigSize)
	}
	p := &configParser{Parser: yamlconf.Parser{Name: name}}
	cfg := &FileConfig{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil // empty, or comments only
		}
		return nil, p.SyntaxError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, p.SyntaxError(err)
		}
		return nil, p.Errorf(&extra, "a second YAML document (after ---); keep the configuration in one")
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return cfg, nil
		}
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return cfg, nil // "~" or "null": nothing configured
	}
	if err := p.parseRoot(root, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// configParser walks the YAML node tree itself rather than decoding into
// tagged structs, so that every error can say where in the file it is and
// none can echo a token.
type configParser struct {
	yamlconf.Parser
}

// namesExample is how a token's list of names looks, for errors.
const namesExample = `[alice, "alice-*"]`

func (p *configParser) parseRoot(n *yaml.Node, cfg *FileConfig) error {
	return p.Mapping(n, "the configuration", []string{"tokens", "limits"}, func(key string, k, v *yaml.Node) error {
		switch key {
		case "tokens":
			return p.parseTokens(k, v, cfg)
		default:
			return p.parseLimits(v, &cfg.Limits)
		}
	})
}

func (p *configParser) parseTokens(k, v *yaml.Node, cfg *FileConfig) error {
	if v == nil || v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		return p.Errorf(k, "tokens must be a list with at least one token (- name: …); leave the key out to run without tokens")
	}
	seenName := make(map[string]int)
	reservedBy := make(map[string]string)
	for i, item := range v.Content {
		item = yamlconf.Deref(item)
		t := Token{Name: fmt.Sprintf("token-%d", i+1)}
		if item != nil && item.Kind == yaml.MappingNode {
			// Find the name first, so that errors about other keys carry it.
			for j := 0; j+1 < len(item.Content); j += 2 {
				if item.Content[j].Value == "name" {
					if nv := yamlconf.Deref(item.Content[j+1]); nv != nil && nv.Kind == yaml.ScalarNode && nv.Value != "" {
						t.Name = nv.Value
					}
				}
			}
		}
		what := fmt.Sprintf("token %q", t.Name)
		err := p.Mapping(item, what, []string{"name", "token", "sha256", "names", "reserved", "max_tunnels"}, func(key string, k, v *yaml.Node) error {
			var err error
			switch key {
			case "name":
				_, err = p.str(v, what+": name")
			case "token":
				// Never echo the value: it is a secret.
				if v.Kind != yaml.ScalarNode {
					return p.Errorf(v, "%s: token must be a string", what)
				}
				t.Secret = v.Value
				if v.Tag == "!!null" || t.Secret == "" {
					return p.Errorf(v, "%s: token is empty: an empty token would let anyone in; give a long random token (openssl rand -hex 24)", what)
				}
			case "sha256":
				if v.Kind != yaml.ScalarNode {
					return p.Errorf(v, "%s: sha256 must be 64 hex digits", what)
				}
				t.SHA256 = v.Value
				if v.Tag == "!!null" || t.SHA256 == "" {
					return p.Errorf(v, "%s: sha256 is empty: an empty token would let anyone in; give the token's hex SHA-256", what)
				}
			case "names":
				t.Names, err = p.StrList(v, what+": names", namesExample)
			case "reserved":
				t.Reserved, err = p.StrList(v, what+": reserved", namesExample)
			case "max_tunnels":
				t.MaxTunnels, err = p.intValue(v, what+": max_tunnels", 0)
			}
			return err
		})
		if err != nil {
			return err
		}
		if line, ok := seenName[t.Name]; ok {
			return p.Errorf(item, "token name %q is used twice (first at line %d); give each token its own name", t.Name, line)
		}
		seenName[t.Name] = item.Line
		for _, r := range t.Reserved {
			if other, ok := reservedBy[r]; ok {
				return p.Errorf(item, "%s: name %q is already reserved by token %q", what, r, other)
			}
			reservedBy[r] = t.Name
		}
		// With the tokens before it, so that an error about two tokens
		// points at the second.
		if err := CheckTokens(append(slices.Clip(cfg.Tokens), t)); err != nil {
			return p.Errorf(item, "%v", err)
		}
		cfg.Tokens = append(cfg.Tokens, t)
	}
	// Each token passed alone and the names are unique; this is the relay's
	// own check of the set, so that the file accepts exactly what New does.
	if err := CheckTokens(cfg.Tokens); err != nil {
		return p.Errorf(k, "%v", err)
	}
	return nil
}

func (p *configParser) parseLimits(n *yaml.Node, l *Limits) error {
	known := []string{"max_tunnels_per_token", "max_streams_per_tunnel", "conn_rate_per_ip", "conn_rate_loopback", "response_header_timeout", "auth_failures_per_minute"}
	return p.Mapping(n, "limits", known, func(key string, k, v *yaml.Node) error {
		var err error
		what := "limits: " + key
		switch key {
		case "max_tunnels_per_token":
			l.MaxTunnelsPerToken, err = p.intValue(v, what, 0)
		case "max_streams_per_tunnel":
			l.MaxStreamsPerTunnel, err = p.intValue(v, what, 0)
			if err == nil && l.MaxStreamsPerTunnel > MaxStreamsLimit {
				err = p.Errorf(v, "%s: at most %d", what, MaxStreamsLimit)
			}
		case "conn_rate_per_ip":
			l.ConnRatePerIP, err = p.rate(v, what)
		case "conn_rate_loopback":
			l.ConnRateLoopback, err = p.Bool(v, what)
		case "response_header_timeout":
			l.ResponseHeaderTimeout, err = p.duration(v, what)
		case "auth_failures_per_minute":
			l.AuthFailuresPerMinute, err = p.intValue(v, what, 0)
		}
		return err
	})
}

func (p *configParser) str(n *yaml.Node, what string) (string, error) {
	return p.Scalar(n, what, "a string")
}

// intValue reads a whole number of at least min.
func (p *configParser) intValue(n *yaml.Node, what string, min int) (int, error) {
	s, err := p.Scalar(n, what, "a whole number")
	if err != nil {
		return 0, err
	}
	i, err := strconv.Atoi(s)
	if err != nil {
		return 0, p.Errorf(n, "%s: want a whole number, got %q", what, s)
	}
	if i < min {
		return 0, p.Errorf(n, "%s: must be at least %d, got %d", what, min, i)
	}
	return i, nil
}

// rate reads a per-second rate; negative means no limit.
func (p *configParser) rate(n *yaml.Node, what string) (float64, error) {
	s, err := p.Scalar(n, what, "a number of connections per second")
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.Abs(f) > 1e9 {
		return 0, p.Errorf(n, "%s: want a number of connections per second (negative: no limit), got %q", what, s)
	}
	return f, nil
}

func (p *configParser) duration(n *yaml.Node, what string) (time.Duration, error) {
	s, err := p.Scalar(n, what, "a duration like 60s or 2m")
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, p.Errorf(n, "%s: want a duration like 60s or 2m, got %q", what, s)
	}
	if d < 0 {
		return 0, p.Errorf(n, "%s: must not be negative, got %s", what, s)
	}
	return d, nil
}
