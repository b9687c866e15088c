package main

import (
	"context"
	"fmt"
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
// SIGHUP, and when the file's size, modification time or identity changes
// and then stays as it is for one more poll. Only tokens change at run
// time; limits apply at the next start.
//
// A file an editor writes in place is empty or half there for a moment,
// and half a token list is a valid one: applied, it would disconnect every
// agent whose token is in the other half, for good. So a change is applied
// once it has settled, and a read during which the file changed is not
// applied at all.
type configReloader struct {
	path   string
	fixed  []relay.Token // from --token and TUNNEL_TOKEN, kept in every reload
	limits relay.Limits  // the limits the relay started with
	log    *slog.Logger
	hup    <-chan os.Signal
	every  time.Duration

	seen     fileStamp // the file as it was at the last load attempt
	settling fileStamp // if pending, a change seen at the last poll, not applied yet
	pending  bool
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

// load reads the file, logs its warnings and remembers its stamp. It fails
// if the file is no longer as before, the stamp taken before the read: it
// changed meanwhile and may have been read half-written. The next poll
// sees the change and reads it again.
func (r *configReloader) load(before fileStamp) (*relay.FileConfig, error) {
	r.seen = before
	file, err := relay.LoadConfigFile(r.path)
	if err != nil {
		return nil, err
	}
	if !stampOf(r.path).same(before) {
		return nil, fmt.Errorf("config: %s changed while it was read; it is read again once it stops changing", r.path)
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
			r.reload(s, "SIGHUP", stampOf(r.path))
		case <-t.C:
			if now, ok := r.settled(); ok {
				r.reload(s, "file changed", now)
			}
		}
	}
}

// settled is the poll: it reports whether the file differs from what was
// last loaded and is as it was at the previous poll, with its stamp.
func (r *configReloader) settled() (fileStamp, bool) {
	now := stampOf(r.path)
	if now.same(r.seen) {
		r.pending = false
		return now, false
	}
	if !r.pending || !now.same(r.settling) {
		// Changed since the last look: give the writer one more interval
		// to finish.
		r.settling, r.pending = now, true
		return now, false
	}
	r.pending = false
	return now, true
}

// reload applies the file's tokens, or logs in one line why it cannot and
// keeps the running ones.
func (r *configReloader) reload(s *relay.Server, trigger string, before fileStamp) {
	file, err := r.load(before)
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
