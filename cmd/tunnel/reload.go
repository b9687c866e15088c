package main

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/tunnel-dev/tunnel/relay"
)

// configPollInterval is how often the relay looks at its --config file for
// changes. Polling the file's metadata costs nothing worth a dependency on
// a file-notification library, and catches editors that replace the file.
const configPollInterval = 2 * time.Second

// configReloader applies a changed --config file to a running relay: on
// SIGHUP, and when the file's size, modification time or identity changes.
// Only tokens change at run time; limits apply at the next start.
type configReloader struct {
	path   string
	fixed  []relay.Token // from --token and TUNNEL_TOKEN, kept in every reload
	limits relay.Limits  // the limits the relay started with
	log    *slog.Logger
	hup    <-chan os.Signal
	every  time.Duration

	seen fileStamp // the file as it was at the last load attempt
}

// fileStamp is what polling compares to notice a change.
type fileStamp struct {
	info os.FileInfo // nil when the file could not be read
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{fi}
}

func (a fileStamp) same(b fileStamp) bool {
	if a.info == nil || b.info == nil {
		return a.info == nil && b.info == nil
	}
	return os.SameFile(a.info, b.info) && a.info.Size() == b.info.Size() && a.info.ModTime().Equal(b.info.ModTime())
}

// load reads the file, logs its warnings and remembers its stamp. The stamp
// is taken first, so that a write during the read is seen by the next poll.
func (r *configReloader) load() (*relay.FileConfig, error) {
	r.seen = stampOf(r.path)
	file, err := relay.LoadConfigFile(r.path)
	if err != nil {
		return nil, err
	}
	for _, w := range file.Warnings {
		r.log.Warn(w)
	}
	return file, nil
}

// run reloads the file into s on SIGHUP and on change until ctx is done.
func (r *configReloader) run(ctx context.Context, s *relay.Server) {
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.hup:
			r.reload(s, "SIGHUP")
		case <-t.C:
			if !stampOf(r.path).same(r.seen) {
				r.reload(s, "file changed")
			}
		}
	}
}

// reload applies the file's tokens, or logs in one line why it cannot and
// keeps the running ones.
func (r *configReloader) reload(s *relay.Server, trigger string) {
	file, err := r.load()
	if err == nil {
		err = s.SetTokens(append(append([]relay.Token{}, r.fixed...), file.Tokens...))
	}
	if err != nil {
		r.log.Error("config not reloaded; the running tokens stay", "trigger", trigger, "err", err)
		return
	}
	if file.Limits != r.limits {
		r.log.Warn("limits in the config file changed; they apply when the relay restarts", "file", r.path)
	}
}
