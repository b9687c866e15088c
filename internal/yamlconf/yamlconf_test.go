package yamlconf

import (
	"errors"
	"testing"

	"go.yaml.in/yaml/v3"
)

func parse(t *testing.T, src string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}

// Every error names the file and the line, and says what was wanted.
func TestErrorsSayWhere(t *testing.T) {
	p := &Parser{Name: "x.yaml"}
	known := []string{"a", "b"}
	visit := func(key string, k, v *yaml.Node) error {
		_, err := p.Bool(v, key)
		return err
	}
	for _, tc := range []struct{ src, want string }{
		{"a: true\nc: 1\n", `x.yaml:2: top: unknown key "c"; known keys are a, b`},
		{"a: true\na: false\n", `x.yaml:2: top: key "a" is given twice (first at line 1)`},
		{"- a\n", "x.yaml:1: top must be a mapping of keys (a, b)"},
		{"a: yes\n", `x.yaml:1: a: want true or false, got "yes"`},
		{"b: ~\n", "x.yaml:1: b: want true or false"},
		{"a: &x true\nb: *x\n", ""},
	} {
		err := p.Mapping(parse(t, tc.src), "top", known, visit)
		if got := errString(err); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.src, got, tc.want)
		}
	}
}

func TestStrList(t *testing.T) {
	p := &Parser{Name: "x.yaml"}
	for _, tc := range []struct {
		src  string
		want []string
		err  string
	}{
		{"one", []string{"one"}, ""},
		{"[one, two]", []string{"one", "two"}, ""},
		{"{a: b}", nil, `x.yaml:1: names: want a list like [alice]`},
		{"[one, [two]]", nil, `x.yaml:1: names: want a list like [alice]`},
	} {
		got, err := p.StrList(parse(t, tc.src), "names", "[alice]")
		if errString(err) != tc.err || len(got) != len(tc.want) {
			t.Errorf("%q: got %q, %v; want %q, %q", tc.src, got, err, tc.want, tc.err)
		}
	}
}

func TestSyntaxError(t *testing.T) {
	p := &Parser{Name: "x.yaml"}
	err := p.SyntaxError(errors.New("yaml: line 4: did not find\n expected key"))
	if got, want := err.Error(), "x.yaml:4: did not find expected key"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
