package proto_test

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/proto"
)

// TestSpecCoversCode checks SPEC.md against the code: a row in the message
// table for every message type, a row in the error table for every code,
// and every JSON field of every message, nested objects included, named in
// the text, so that the spec stays readable without the code.
func TestSpecCoversCode(t *testing.T) {
	b, err := os.ReadFile("SPEC.md")
	if err != nil {
		t.Fatal(err)
	}
	spec := string(b)
	for n := 1; ; n++ {
		name := proto.Type(n).String()
		if strings.HasPrefix(name, "type(") {
			break
		}
		if row := fmt.Sprintf("| %d | %s |", n, name); !strings.Contains(spec, row) {
			t.Errorf("SPEC.md's message table has no row %q", row)
		}
	}
	for n := 1; ; n++ {
		name := proto.Code(n).String()
		if strings.HasPrefix(name, "code(") {
			break
		}
		if row := fmt.Sprintf("| %d | `%s` |", n, name); !strings.Contains(spec, row) {
			t.Errorf("SPEC.md's error table has no row %q", row)
		}
	}
	seen := map[reflect.Type]bool{}
	var fields func(reflect.Type)
	fields = func(rt reflect.Type) {
		for rt.Kind() == reflect.Pointer || rt.Kind() == reflect.Slice {
			rt = rt.Elem()
		}
		if rt.Kind() != reflect.Struct || rt.PkgPath() != "github.com/tunnel-dev/tunnel/proto" || seen[rt] {
			return
		}
		seen[rt] = true
		for f := range rt.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			if !strings.Contains(spec, "`"+name+"`") {
				t.Errorf("SPEC.md does not name %s's field `%s`", rt.Name(), name)
			}
			fields(f.Type)
		}
	}
	for _, m := range []proto.Message{
		&proto.Hello{}, &proto.Welcome{}, &proto.Error{}, &proto.Notice{}, &proto.Goodbye{},
		&proto.Event{}, &proto.StreamHeader{}, &proto.StreamReply{}, &proto.StreamReset{},
	} {
		fields(reflect.TypeOf(m))
	}
	if len(seen) < 13 {
		t.Errorf("checked the fields of %d types; the walk is off", len(seen))
	}
}
