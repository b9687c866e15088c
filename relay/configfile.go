package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
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
//	  auth_failures_per_minute: 10
//
// Every key is optional; omitted limits take Limits' defaults.
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
	p := &configParser{name: name}
	cfg := &FileConfig{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil // empty, or comments only
		}
		return nil, p.yamlError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, p.yamlError(err)
		}
		return nil, p.errorf(&extra, "a second YAML document (after ---); keep the configuration in one")
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
	name string
}

func (p *configParser) errorf(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", p.name, n.Line, fmt.Sprintf(format, args...))
}

// yamlError rephrases the YAML library's syntax errors, "yaml: line 4: …",
// as "relay.yaml:4: …".
func (p *configParser) yamlError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, text, ok := strings.Cut(rest, ": "); ok {
			if _, err := strconv.Atoi(num); err == nil {
				return fmt.Errorf("%s:%s: %s", p.name, num, yamlOneLine(text))
			}
		}
	}
	return fmt.Errorf("%s: %s", p.name, yamlOneLine(msg))
}

func yamlOneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// yamlDeref follows aliases (*anchor) to the node they stand for.
func yamlDeref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// mapping calls field for each key of the mapping n, refusing keys not in
// known and keys given twice. what names the mapping in errors.
func (p *configParser) mapping(n *yaml.Node, what string, known []string, field func(key string, k, v *yaml.Node) error) error {
	n = yamlDeref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return p.errorf(yamlNodeOr(n), "%s must be a mapping of keys (%s)", what, strings.Join(known, ", "))
	}
	seen := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return p.errorf(k, "%s: keys must be plain words like %s", what, known[0])
		}
		key := k.Value
		if line, ok := seen[key]; ok {
			return p.errorf(k, "%s: key %q is given twice (first at line %d)", what, key, line)
		}
		seen[key] = k.Line
		isKnown := false
		for _, kk := range known {
			isKnown = isKnown || kk == key
		}
		if !isKnown {
			return p.errorf(k, "%s: unknown key %q; known keys are %s", what, key, strings.Join(known, ", "))
		}
		if err := field(key, k, yamlDeref(v)); err != nil {
			return err
		}
	}
	return nil
}

// yamlNodeOr returns n, or a node at line 0 when there is none, for errorf.
func yamlNodeOr(n *yaml.Node) *yaml.Node {
	if n == nil {
		return &yaml.Node{}
	}
	return n
}

func (p *configParser) parseRoot(n *yaml.Node, cfg *FileConfig) error {
	return p.mapping(n, "the configuration", []string{"tokens", "limits"}, func(key string, k, v *yaml.Node) error {
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
		return p.errorf(k, "tokens must be a list with at least one token (- name: …); leave the key out to run without tokens")
	}
	seenName := make(map[string]int)
	reservedBy := make(map[string]string)
	for i, item := range v.Content {
		item = yamlDeref(item)
		t := Token{Name: fmt.Sprintf("token-%d", i+1)}
		if item != nil && item.Kind == yaml.MappingNode {
			// Find the name first, so that errors about other keys carry it.
			for j := 0; j+1 < len(item.Content); j += 2 {
				if item.Content[j].Value == "name" {
					if nv := yamlDeref(item.Content[j+1]); nv != nil && nv.Kind == yaml.ScalarNode && nv.Value != "" {
						t.Name = nv.Value
					}
				}
			}
		}
		what := fmt.Sprintf("token %q", t.Name)
		err := p.mapping(item, what, []string{"name", "token", "sha256", "names", "reserved", "max_tunnels"}, func(key string, k, v *yaml.Node) error {
			var err error
			switch key {
			case "name":
				_, err = p.str(v, what+": name")
			case "token":
				// Never echo the value: it is a secret.
				if v.Kind != yaml.ScalarNode {
					return p.errorf(v, "%s: token must be a string", what)
				}
				t.Secret = v.Value
				if v.Tag == "!!null" || t.Secret == "" {
					return p.errorf(v, "%s: token is empty: an empty token would let anyone in; give a long random token (openssl rand -hex 24)", what)
				}
			case "sha256":
				if v.Kind != yaml.ScalarNode {
					return p.errorf(v, "%s: sha256 must be 64 hex digits", what)
				}
				t.SHA256 = v.Value
				if v.Tag == "!!null" || t.SHA256 == "" {
					return p.errorf(v, "%s: sha256 is empty: an empty token would let anyone in; give the token's hex SHA-256", what)
				}
			case "names":
				t.Names, err = p.strList(v, what+": names")
			case "reserved":
				t.Reserved, err = p.strList(v, what+": reserved")
			case "max_tunnels":
				t.MaxTunnels, err = p.intValue(v, what+": max_tunnels", 0)
			}
			return err
		})
		if err != nil {
			return err
		}
		if line, ok := seenName[t.Name]; ok {
			return p.errorf(item, "token name %q is used twice (first at line %d); give each token its own name", t.Name, line)
		}
		seenName[t.Name] = item.Line
		for _, r := range t.Reserved {
			if other, ok := reservedBy[r]; ok {
				return p.errorf(item, "%s: name %q is already reserved by token %q", what, r, other)
			}
			reservedBy[r] = t.Name
		}
		if err := CheckTokens([]Token{t}); err != nil {
			return p.errorf(item, "%v", err)
		}
		cfg.Tokens = append(cfg.Tokens, t)
	}
	// Each token passed alone and the names are unique; this is the relay's
	// own check of the set, so that the file accepts exactly what New does.
	if err := CheckTokens(cfg.Tokens); err != nil {
		return p.errorf(k, "%v", err)
	}
	return nil
}

func (p *configParser) parseLimits(n *yaml.Node, l *Limits) error {
	known := []string{"max_tunnels_per_token", "max_streams_per_tunnel", "conn_rate_per_ip", "conn_rate_loopback", "response_header_timeout", "auth_failures_per_minute"}
	return p.mapping(n, "limits", known, func(key string, k, v *yaml.Node) error {
		var err error
		what := "limits: " + key
		switch key {
		case "max_tunnels_per_token":
			l.MaxTunnelsPerToken, err = p.intValue(v, what, 0)
		case "max_streams_per_tunnel":
			l.MaxStreamsPerTunnel, err = p.intValue(v, what, 0)
			if err == nil && l.MaxStreamsPerTunnel > MaxStreamsLimit {
				err = p.errorf(v, "%s: at most %d", what, MaxStreamsLimit)
			}
		case "conn_rate_per_ip":
			l.ConnRatePerIP, err = p.rate(v, what)
		case "conn_rate_loopback":
			l.ConnRateLoopback, err = p.boolValue(v, what)
		case "response_header_timeout":
			l.ResponseHeaderTimeout, err = p.duration(v, what)
		case "auth_failures_per_minute":
			l.AuthFailuresPerMinute, err = p.intValue(v, what, 0)
		}
		return err
	})
}

func (p *configParser) scalar(n *yaml.Node, what, want string) (string, error) {
	if n == nil || n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", p.errorf(yamlNodeOr(n), "%s: want %s", what, want)
	}
	return n.Value, nil
}

func (p *configParser) str(n *yaml.Node, what string) (string, error) {
	return p.scalar(n, what, "a string")
}

func (p *configParser) strList(n *yaml.Node, what string) ([]string, error) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{n.Value}, nil // a single name needs no brackets
	}
	if n.Kind != yaml.SequenceNode {
		return nil, p.errorf(n, "%s: want a list like [alice, \"alice-*\"]", what)
	}
	var out []string
	for _, item := range n.Content {
		s, err := p.scalar(yamlDeref(item), what, "a list of strings")
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// intValue reads a whole number of at least min.
func (p *configParser) intValue(n *yaml.Node, what string, min int) (int, error) {
	s, err := p.scalar(n, what, "a whole number")
	if err != nil {
		return 0, err
	}
	i, err := strconv.Atoi(s)
	if err != nil {
		return 0, p.errorf(n, "%s: want a whole number, got %q", what, s)
	}
	if i < min {
		return 0, p.errorf(n, "%s: must be at least %d, got %d", what, min, i)
	}
	return i, nil
}

// rate reads a per-second rate; negative means no limit.
func (p *configParser) rate(n *yaml.Node, what string) (float64, error) {
	s, err := p.scalar(n, what, "a number of connections per second")
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.Abs(f) > 1e9 {
		return 0, p.errorf(n, "%s: want a number of connections per second (negative: no limit), got %q", what, s)
	}
	return f, nil
}

func (p *configParser) boolValue(n *yaml.Node, what string) (bool, error) {
	s, err := p.scalar(n, what, "true or false")
	if err != nil {
		return false, err
	}
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, p.errorf(n, "%s: want true or false, got %q", what, s)
}

func (p *configParser) duration(n *yaml.Node, what string) (time.Duration, error) {
	s, err := p.scalar(n, what, "a duration like 60s or 2m")
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, p.errorf(n, "%s: want a duration like 60s or 2m, got %q", what, s)
	}
	if d < 0 {
		return 0, p.errorf(n, "%s: must not be negative, got %s", what, s)
	}
	return d, nil
}
