package relay

import (
	"fmt"
	"html/template"
	"net/http"
	"strings"
)

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Status}} {{.Title}}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}code{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}small{color:#777}</style></head>
<body><h1>{{.Status}} — {{.Title}}</h1><p>{{.Detail}}</p><p><small>tunnel relay</small></p></body></html>
`))

// writePage answers with a short error page: HTML for browsers, one line of
// text for everything else. A proxied request's recorder notes the page as
// the relay's own, whose bytes are not the agent's.
func writePage(w http.ResponseWriter, r *http.Request, status int, title, detail string) {
	if rec, ok := w.(*recorder); ok {
		rec.relayPage = true
	}
	w.Header().Del("Content-Length")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if strings.Contains(r.Header.Get("Accept"), "text/html") {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		pageTmpl.Execute(w, struct {
			Status        int
			Title, Detail string
		}{status, title, detail})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "%d %s: %s\n", status, title, detail)
}

var landingTmpl = template.Must(template.New("landing").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunnel relay — {{.Domain}}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}
pre{background:#f3f3f3;padding:.6rem;border-radius:4px;overflow:auto}</style></head>
<body><h1>tunnel relay</h1>
<p>This relay gives local HTTP and WebSocket servers public names under <b>*.{{.Domain}}</b>.</p>
<p>Expose a server running on port 8080 of your machine:</p>
<pre>tunnel expose -p 8080 -s demo --relay {{.Relay}}</pre>
<p>It is then reachable at <code>demo.{{.Domain}}</code>, over HTTP and WebSocket.</p>
</body></html>
`))

func writeLanding(w http.ResponseWriter, r *http.Request, domain string) {
	relay := "http://" + r.Host
	if r.TLS != nil {
		relay = "https://" + r.Host
	}
	if !strings.Contains(r.Header.Get("Accept"), "text/html") {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "tunnel relay for *.%s — expose a local server with: tunnel expose -p 8080 -s demo --relay %s\n", domain, relay)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	landingTmpl.Execute(w, struct{ Domain, Relay string }{domain, relay})
}
