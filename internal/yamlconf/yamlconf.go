// Package yamlconf reads the small YAML configuration files of the relay
// (relay.yaml) and the agent (tunnels.yaml) strictly: it walks the YAML
// node tree itself instead of decoding into tagged structs, so that every
// error names the file and line it is about, refuses unknown and repeated
// keys, and can never echo a value (a token, a password) back.
package yamlconf

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Parser reports errors in the file called Name.
type Parser struct {
	Name string
}

// Errorf is an error at n's line: "relay.yaml:4: …".
func (p *Parser) Errorf(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", p.Name, n.Line, fmt.Sprintf(format, args...))
}

// SyntaxError rephrases the YAML library's errors, "yaml: line 4: …", as
// "relay.yaml:4: …", on one line.
func (p *Parser) SyntaxError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, text, ok := strings.Cut(rest, ": "); ok {
			if _, err := strconv.Atoi(num); err == nil {
				return fmt.Errorf("%s:%s: %s", p.Name, num, oneLine(text))
			}
		}
	}
	return fmt.Errorf("%s: %s", p.Name, oneLine(msg))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Deref follows aliases (*anchor) to the node they stand for.
func Deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// NodeOr returns n, or a node at line 0 when there is none, for Errorf.
func NodeOr(n *yaml.Node) *yaml.Node {
	if n == nil {
		return &yaml.Node{}
	}
	return n
}

// Mapping calls field for each key of the mapping n, with the value
// dereferenced, refusing keys not in known and keys given twice. what
// names the mapping in errors.
func (p *Parser) Mapping(n *yaml.Node, what string, known []string, field func(key string, k, v *yaml.Node) error) error {
	n = Deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return p.Errorf(NodeOr(n), "%s must be a mapping of keys (%s)", what, strings.Join(known, ", "))
	}
	seen := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return p.Errorf(k, "%s: keys must be plain words like %s", what, known[0])
		}
		key := k.Value
		if line, ok := seen[key]; ok {
			return p.Errorf(k, "%s: key %q is given twice (first at line %d)", what, key, line)
		}
		seen[key] = k.Line
		isKnown := false
		for _, kk := range known {
			isKnown = isKnown || kk == key
		}
		if !isKnown {
			return p.Errorf(k, "%s: unknown key %q; known keys are %s", what, key, strings.Join(known, ", "))
		}
		if err := field(key, k, Deref(v)); err != nil {
			return err
		}
	}
	return nil
}

// Scalar reads a scalar that is not null; want says what was expected.
func (p *Parser) Scalar(n *yaml.Node, what, want string) (string, error) {
	if n == nil || n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", p.Errorf(NodeOr(n), "%s: want %s", what, want)
	}
	return n.Value, nil
}

// StrList reads a list of strings; a single string is a list of one.
// example shows a list in errors, like [alice, "alice-*"].
func (p *Parser) StrList(n *yaml.Node, what, example string) ([]string, error) {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{n.Value}, nil // a single entry needs no brackets
	}
	if n.Kind != yaml.SequenceNode {
		return nil, p.Errorf(n, "%s: want a list like %s", what, example)
	}
	var out []string
	for _, item := range n.Content {
		s, err := p.Scalar(Deref(item), what, "a list like "+example)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Bool reads true or false, and nothing else YAML might take for one.
func (p *Parser) Bool(n *yaml.Node, what string) (bool, error) {
	s, err := p.Scalar(n, what, "true or false")
	if err != nil {
		return false, err
	}
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, p.Errorf(n, "%s: want true or false, got %q", what, s)
}
