package agent

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tunnel-dev/tunnel/internal/yamlconf"
	"github.com/tunnel-dev/tunnel/proto"
)

// maxConfigSize bounds a configuration file; real ones are a few KiB.
const maxConfigSize = 1 << 20

// LoadConfigFile reads the agent configuration file at path (the one of
// `tunnel start --config FILE`) into a Config with Relay, Token,
// TLSConfig, InspectAddr and Tunnels set. The file is YAML:
//
//	relay: https://example.com        # the CLI: $TUNNEL_RELAY wins
//	token: 3f1c…                      # or token_file: token.txt; $TUNNEL_TOKEN wins
//	ca_file: relay-ca.pem             # extra roots for an https relay
//	inspect_addr: 127.0.0.1:4040      # run the inspector; default: none
//	tunnels:
//	  - name: demo                    # default: a random name
//	    port: 8080                    # localhost:8080; or local: host:port
//	    basic_auth: ["ann:correct-horse"]
//	    allow_ip: [203.0.113.0/24]
//	    deny_ip: [203.0.113.7]
//	  - name: backend
//	    local: 127.0.0.1:8443
//	    local_https: true
//	    local_ca: dev-ca.pem          # or local_insecure: true
//	    host_header: rewrite          # or a host[:port], e.g. api.test
//
// A tunnel's name and port are expose's -s and -p; its other keys are
// expose's flags with '_' for '-'. Files the configuration names
// (token_file, ca_file, local_ca) are read relative to its directory.
// Unknown keys are errors; every error is one line that starts with path
// and the line, and never contains a token or a password.
func LoadConfigFile(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	return parseConfig(path, filepath.Dir(path), data)
}

// ParseConfig parses the contents of an agent configuration file; name is
// used in errors ("tunnels.yaml:4: …"), and the files it names are read
// relative to the current directory. See LoadConfigFile.
func ParseConfig(name string, data []byte) (*Config, error) {
	return parseConfig(name, "", data)
}

func parseConfig(name, dir string, data []byte) (*Config, error) {
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("%s: larger than %d bytes; is it the right file?", name, maxConfigSize)
	}
	p := &configParser{Parser: yamlconf.Parser{Name: name}, dir: dir}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty; list the tunnels under tunnels:", name)
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
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	cfg := &Config{}
	if err := p.parseRoot(root, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// configParser walks the YAML node tree itself rather than decoding into
// tagged structs, so that every error can say where in the file it is and
// none can echo a secret.
type configParser struct {
	yamlconf.Parser
	dir string // relative paths in the file are relative to this
}

func (p *configParser) parseRoot(n *yaml.Node, cfg *Config) error {
	known := []string{"relay", "token", "token_file", "ca_file", "inspect_addr", "tunnels"}
	var tokenKey, tunnelsKey *yaml.Node
	err := p.Mapping(n, "the configuration", known, func(key string, k, v *yaml.Node) error {
		var err error
		switch key {
		case "relay":
			if cfg.Relay, err = p.str(v, key); err != nil {
				return err
			}
			u, err := url.Parse(cfg.Relay)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return p.Errorf(v, "relay %q is not a URL like https://example.com or http://localhost:8000", RedactURL(cfg.Relay))
			}
			if !bareRelayURL(u) {
				return p.Errorf(v, "relay %q has more than a scheme and a host, which the agent would ignore: give it as %s://%s", RedactURL(cfg.Relay), u.Scheme, u.Host)
			}
		case "token", "token_file":
			if tokenKey != nil {
				return p.Errorf(k, "token and token_file do not go together (the other is at line %d); keep one", tokenKey.Line)
			}
			tokenKey = k
			if key == "token" {
				// Never echo the value: it is a secret.
				if v.Kind != yaml.ScalarNode || v.Tag == "!!null" || strings.TrimSpace(v.Value) == "" {
					return p.Errorf(v, "token is empty or not a string; give the relay's token, or leave the key out for a relay without tokens")
				}
				cfg.Token = strings.TrimSpace(v.Value)
				return nil
			}
			path, err := p.path(v, key)
			if err != nil {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return p.Errorf(v, "token_file: %v", err)
			}
			if cfg.Token = strings.TrimSpace(string(b)); cfg.Token == "" {
				return p.Errorf(v, "token_file %s is empty; write the relay's token in it", path)
			}
		case "ca_file":
			path, err := p.path(v, key)
			if err != nil {
				return err
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if err := AddCertsFromPEMFile(pool, path); err != nil {
				return p.Errorf(v, "ca_file: %v", err)
			}
			cfg.TLSConfig = &tls.Config{RootCAs: pool}
		case "inspect_addr":
			if cfg.InspectAddr, err = p.str(v, key); err != nil {
				return err
			}
			if _, _, err := net.SplitHostPort(cfg.InspectAddr); err != nil {
				return p.Errorf(v, "inspect_addr %q is not host:port, e.g. 127.0.0.1:4040", cfg.InspectAddr)
			}
		case "tunnels":
			tunnelsKey = k
			cfg.Tunnels, err = p.parseTunnels(k, v)
		}
		return err
	})
	if err != nil {
		return err
	}
	if tunnelsKey == nil {
		return p.Errorf(yamlconf.NodeOr(n), "no tunnels: list them under tunnels:, each with a port (or local: host:port)")
	}
	return nil
}

func (p *configParser) parseTunnels(k, v *yaml.Node) ([]Tunnel, error) {
	if v == nil || v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		return nil, p.Errorf(k, "tunnels must be a list with at least one tunnel (- name: demo, port: 8080)")
	}
	var out []Tunnel
	names := make(map[string]int)
	for i, item := range v.Content {
		item = yamlconf.Deref(item)
		t, err := p.parseTunnel(item, i+1)
		if err != nil {
			return nil, err
		}
		if t.Name != "" {
			if line, ok := names[t.Name]; ok {
				return nil, p.Errorf(item, "tunnel %q is listed twice (first at line %d); give each its own name", t.Name, line)
			}
			names[t.Name] = item.Line
		}
		out = append(out, t)
	}
	return out, nil
}

func (p *configParser) parseTunnel(n *yaml.Node, index int) (Tunnel, error) {
	var t Tunnel
	what := fmt.Sprintf("tunnel %d", index)
	// Find the name first, so that errors about other keys carry it.
	if n != nil && n.Kind == yaml.MappingNode {
		for j := 0; j+1 < len(n.Content); j += 2 {
			if n.Content[j].Value == "name" {
				if nv := yamlconf.Deref(n.Content[j+1]); nv != nil && nv.Kind == yaml.ScalarNode && nv.Value != "" {
					what = fmt.Sprintf("tunnel %q", nv.Value)
				}
			}
		}
	}
	known := []string{"name", "port", "local", "local_https", "local_ca", "local_insecure", "host_header", "basic_auth", "allow_ip", "deny_ip"}
	keys := make(map[string]*yaml.Node)
	var access Access
	err := p.Mapping(n, what, known, func(key string, k, v *yaml.Node) error {
		keys[key] = k
		var err error
		at := what + ": " + key
		switch key {
		case "name":
			if t.Name, err = p.str(v, at); err != nil {
				return err
			}
			if err := proto.ValidateName(t.Name); err != nil {
				return p.Errorf(v, "%v", err)
			}
		case "port":
			port, err := p.port(v, at)
			if err != nil {
				return err
			}
			t.Local = net.JoinHostPort("localhost", strconv.Itoa(port))
		case "local":
			if t.Local, err = p.str(v, at); err != nil {
				return err
			}
			host, port, err := net.SplitHostPort(t.Local)
			if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				return p.Errorf(v, "%s %q is not host:port like 127.0.0.1:8080", at, t.Local)
			}
		case "local_https":
			t.LocalHTTPS, err = p.Bool(v, at)
		case "local_ca":
			path, err := p.path(v, at)
			if err != nil {
				return err
			}
			// Only this CA: a local server's certificate comes from a
			// development CA, never from a public one.
			pool := x509.NewCertPool()
			if err := AddCertsFromPEMFile(pool, path); err != nil {
				return p.Errorf(v, "%s: %v", at, err)
			}
			t.LocalCA = pool
		case "local_insecure":
			t.LocalInsecure, err = p.Bool(v, at)
		case "host_header":
			if t.HostHeader, err = p.str(v, at); err != nil {
				return err
			}
			if t.HostHeader != HostRewrite {
				if err := ValidateHostHeader(t.HostHeader); err != nil {
					return p.Errorf(v, "%s: %v (or rewrite, for the local address)", what, err)
				}
			}
		case "basic_auth":
			// The values hold passwords: errors describe them, never echo them.
			list, err := p.StrList(v, at, `["user:password"]`)
			if err != nil {
				return err
			}
			for _, s := range list {
				user, pass, ok := strings.Cut(s, ":")
				if !ok || user == "" {
					return p.Errorf(v, "%s: each entry is user:password, and one has no user before a ':'", at)
				}
				access.BasicAuth = append(access.BasicAuth, BasicUser(user, pass))
			}
		case "allow_ip", "deny_ip":
			list, err := p.StrList(v, at, "[203.0.113.0/24]")
			if err != nil {
				return err
			}
			for _, s := range list {
				s = strings.TrimSpace(s)
				if _, err := netip.ParsePrefix(s); err != nil {
					if _, err := netip.ParseAddr(s); err != nil {
						return p.Errorf(v, "%s: %q is not an IP address or a CIDR prefix like 203.0.113.0/24", at, s)
					}
				}
				if key == "allow_ip" {
					access.AllowIPs = append(access.AllowIPs, s)
				} else {
					access.DenyIPs = append(access.DenyIPs, s)
				}
			}
		}
		return err
	})
	if err != nil {
		return t, err
	}
	switch {
	case keys["port"] != nil && keys["local"] != nil:
		return t, p.Errorf(keys["local"], "%s: port and local do not go together (port is at line %d); keep one", what, keys["port"].Line)
	case t.Local == "":
		return t, p.Errorf(n, "%s: no local server: give its port (port: 8080) or address (local: 127.0.0.1:8080)", what)
	case keys["local_ca"] != nil && keys["local_insecure"] != nil && t.LocalInsecure:
		return t, p.Errorf(keys["local_insecure"], "%s: local_ca and local_insecure do not go together (local_ca is at line %d); keep one", what, keys["local_ca"].Line)
	case !t.LocalHTTPS && keys["local_ca"] != nil:
		return t, p.Errorf(keys["local_ca"], "%s: local_ca applies only to an HTTPS local server; add local_https: true", what)
	case !t.LocalHTTPS && t.LocalInsecure:
		return t, p.Errorf(keys["local_insecure"], "%s: local_insecure applies only to an HTTPS local server; add local_https: true", what)
	}
	if len(access.BasicAuth)+len(access.AllowIPs)+len(access.DenyIPs) > 0 {
		t.Access = &access
	}
	return t, nil
}

func (p *configParser) str(n *yaml.Node, what string) (string, error) {
	s, err := p.Scalar(n, what, "a string")
	if err == nil && s == "" {
		err = p.Errorf(n, "%s is empty", what)
	}
	return s, err
}

// path reads a file name, relative to the configuration file's directory.
func (p *configParser) path(n *yaml.Node, what string) (string, error) {
	s, err := p.Scalar(n, what, "a file name")
	if err != nil {
		return "", err
	}
	if s == "" {
		return "", p.Errorf(n, "%s is empty; give a file name", what)
	}
	if !filepath.IsAbs(s) && p.dir != "" {
		s = filepath.Join(p.dir, s)
	}
	return s, nil
}

func (p *configParser) port(n *yaml.Node, what string) (int, error) {
	s, err := p.Scalar(n, what, "a TCP port from 1 to 65535")
	if err != nil {
		return 0, err
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 1 || i > 65535 {
		return 0, p.Errorf(n, "%s: want a TCP port from 1 to 65535, got %q", what, s)
	}
	return i, nil
}

// AddCertsFromPEMFile adds the certificates of the PEM file at path to
// pool (other PEM blocks are skipped), or says which one is broken, or
// that there is none.
func AddCertsFromPEMFile(pool *x509.CertPool, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("%s: certificate %d: %v", path, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return fmt.Errorf("%s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path)
	}
	return nil
}
