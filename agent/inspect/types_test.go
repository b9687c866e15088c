package inspect

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A body is sent to the page as text when it is UTF-8, else as base64;
// a truncated one also says how much was kept, and is still text when the
// cap cut its last character in two.
func TestBodyJSON(t *testing.T) {
	accents := []byte(strings.Repeat("é", 10)) // 2 bytes each
	for _, c := range []struct {
		name string
		body Body
		want string
	}{
		{"text", Body{Size: 5, Data: []byte("hello")}, `{"size":5,"text":"hello"}`},
		{"binary", Body{Size: 3, Data: []byte{0xff, 0, 1}}, `{"size":3,"base64":"/wAB"}`},
		{"text cut between characters", Body{Size: 20, Truncated: true, Data: accents[:6]}, `{"size":20,"truncated":true,"kept":6,"text":"ééé"}`},
		{"text cut inside a character", Body{Size: 20, Truncated: true, Data: accents[:7]}, `{"size":20,"truncated":true,"kept":7,"text":"ééé"}`},
		{"binary cut", Body{Size: 100, Truncated: true, Data: []byte{0xff, 0xfe, 0, 1}}, `{"size":100,"truncated":true,"kept":4,"base64":"//4AAQ=="}`},
		// Not text that lost its last character: invalid well before the end.
		{"binary cut, mostly ASCII", Body{Size: 100, Truncated: true, Data: []byte("ab\xffcdefgh")}, `{"size":100,"truncated":true,"kept":9,"base64":"YWL/Y2RlZmdo"}`},
	} {
		got, err := json.Marshal(c.body)
		if err != nil || string(got) != c.want {
			t.Errorf("%s: %s, %v; want %s", c.name, got, err, c.want)
		}
	}
}

// The lists say how many entries the inspector keeps, so that the page
// keeps as many rows as can still be opened.
func TestListsSayTheirMax(t *testing.T) {
	r := newRecorder(Options{MaxRequests: 7, MaxWebSockets: 3})
	api := httptest.NewServer(r.in.Handler(true))
	t.Cleanup(api.Close)
	t.Cleanup(r.in.Close)
	for path, want := range map[string]int{"/api/requests": 7, "/api/websockets": 3} {
		resp, err := http.Get(api.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ Max int }
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil || v.Max != want {
			t.Errorf("GET %s: max %d, %v; want %d", path, v.Max, err, want)
		}
	}
}
