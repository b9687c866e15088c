package inspect

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestEventsStream follows /api/events, the page's live updates, while a
// WebSocket conversation passes: the upgrade's request, the WebSocket's
// opening and closing, and one frame event for each frame recorded, each
// naming its WebSocket. (With nobody following, no event is even built:
// see BenchmarkJoinWebSocket's allocations.)
func TestEventsStream(t *testing.T) {
	r := newRecorder(Options{})
	api := httptest.NewServer(r.in.Handler(true))
	t.Cleanup(api.Close)
	t.Cleanup(r.in.Close) // ends the stream first: Close waits for handlers
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, api.URL+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/event-stream" {
		t.Fatalf("GET /api/events: %s, Content-Type %q", resp.Status, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	// The greeting comes once the stream is subscribed: what happens from
	// here on is sent.
	for sc.Scan() && sc.Text() != ": hello" {
	}

	in, out := conversation(3000)
	c := r.in.Observe(ConnInfo{Tunnel: "demo"})
	c.Tap(true, in.b)
	c.Tap(false, out.b)
	c.Close()
	wss := r.in.WebSockets()
	if len(wss) != 1 {
		t.Fatalf("%d WebSockets recorded, want 1", len(wss))
	}
	ws, _ := r.in.WebSocket(wss[0].ID)
	if len(ws.Frames) == 0 {
		t.Fatal("no frames recorded")
	}

	type event struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	counts := map[string]int{}
	var opened, closed bool
	for counts["frame"] < len(ws.Frames) || !closed {
		if !sc.Scan() {
			t.Fatalf("stream ended (%v) after %v; want %d frame events and the WebSocket's close", sc.Err(), counts, len(ws.Frames))
		}
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		counts[ev.Type]++
		var data struct {
			ID        int64 `json:"id"`
			WebSocket int64 `json:"websocket"`
			Open      bool  `json:"open"`
		}
		json.Unmarshal(ev.Data, &data)
		switch ev.Type {
		case "frame":
			if data.WebSocket != ws.ID {
				t.Errorf("frame event for WebSocket %d, want %d", data.WebSocket, ws.ID)
			}
		case "websocket":
			if data.ID != ws.ID {
				t.Errorf("websocket event for %d, want %d", data.ID, ws.ID)
			}
			opened = opened || data.Open
			closed = closed || !data.Open
		}
	}
	if counts["request"] != 1 || !opened || counts["frame"] != len(ws.Frames) {
		t.Errorf("events %v (opened %v); want 1 request, the WebSocket opened and closed, %d frames", counts, opened, len(ws.Frames))
	}
}
