package tunnel

import (
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Parking a TCP connection (Linux): an epoll set of our own.
//
// Go's poller wakes only the goroutine blocked on a socket, so waiting
// for an idle TCP connection took a goroutine (WaitRead). A parked
// connection is instead in an epoll set of tunnel's, armed for one event
// (EPOLLONESHOT) and tagged with a token; one goroutine waits on that set,
// itself through Go's poller (the epoll descriptor is pollable), while
// anything is parked, and starts a connection's direction again when its
// socket has data, the peer's FIN or an error. Level-triggered arming
// reports what is already there, so nothing that came before the
// registration is missed.
//
// A socket closed here leaves every epoll set without an event. Join
// starts its parked direction when the other one ends (which an abort
// does at once), the relay's connection wrappers do in Close, and a sweep
// every tcpSweep finds any other parked connection that was closed: its
// direction then reads net.ErrClosed and ends. Tokens, not descriptor
// numbers, name what is parked, so a number reused after a close cannot
// start the wrong connection.

func init() {
	parkTCP = tcpParker.park
	unparkTCP = tcpParker.unpark
}

// tcpSweep is how often the parked connections are checked for having
// been closed under their join.
const tcpSweep = time.Second

var tcpParker = &tcpPoller{
	byToken: make(map[uint64]tcpParked),
	byConn:  make(map[*net.TCPConn]uint64),
}

type tcpParked struct {
	c      *net.TCPConn
	resume func()
}

type tcpPoller struct {
	initOnce sync.Once
	initErr  error
	epfd     int
	file     *os.File        // epfd, for Go's poller
	rc       syscall.RawConn // file's

	mu      sync.Mutex
	next    uint64 // the next token
	byToken map[uint64]tcpParked
	byConn  map[*net.TCPConn]uint64
	running bool // the waiting goroutine is
}

func (p *tcpPoller) init() error {
	p.initOnce.Do(func() {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			p.initErr = os.NewSyscallError("epoll_create1", err)
			return
		}
		if err := syscall.SetNonblock(fd, true); err != nil {
			syscall.Close(fd)
			p.initErr = os.NewSyscallError("setnonblock", err)
			return
		}
		p.epfd = fd
		p.file = os.NewFile(uintptr(fd), "tunnel-park-epoll")
		p.rc, p.initErr = p.file.SyscallConn()
	})
	return p.initErr
}

// park arms c in the set; resume is started once c has something to read.
func (p *tcpPoller) park(c *net.TCPConn, resume func()) bool {
	if p.init() != nil {
		return false
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	p.mu.Lock()
	p.next++
	token := p.next
	p.byToken[token] = tcpParked{c, resume}
	p.byConn[c] = token
	if !p.running {
		p.running = true
		go p.wait()
	}
	p.mu.Unlock()

	var ctlErr error
	err = rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{
			Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
			Fd:     int32(uint32(token)),
			Pad:    int32(uint32(token >> 32)),
		}
		// Re-arm a socket parked before; add one that never was (or
		// was closed since, and its number reused).
		ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if ctlErr == syscall.ENOENT {
			ctlErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil && ctlErr == nil {
		return true
	}
	// Closed meanwhile, or epoll refused: the caller waits as before,
	// unless something has started resume already.
	return p.take(c) == nil
}

// unpark starts c's parked direction now, if it is parked.
func (p *tcpPoller) unpark(c *net.TCPConn) {
	if resume := p.take(c); resume != nil {
		go resume()
	}
}

// take removes c from the parked and returns its resume; nil if it is
// not parked. Its registration stays in the set, disarmed or about to
// fire for a token nobody has any more, until c is parked again or
// closed.
func (p *tcpPoller) take(c *net.TCPConn) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	token, ok := p.byConn[c]
	if !ok {
		return nil
	}
	return p.remove(token)
}

// remove forgets token and returns its resume. p.mu must be held.
func (p *tcpPoller) remove(token uint64) func() {
	w, ok := p.byToken[token]
	if !ok {
		return nil
	}
	delete(p.byToken, token)
	delete(p.byConn, w.c)
	if len(p.byToken) == 0 {
		// Let the waiting goroutine see that it can stop.
		p.file.SetReadDeadline(time.Now())
	}
	return w.resume
}

// wait is the goroutine that waits on the set while anything is parked.
func (p *tcpPoller) wait() {
	events := make([]syscall.EpollEvent, 128)
	var start []func()
	lastSweep := time.Now()
	for {
		p.file.SetReadDeadline(time.Now().Add(tcpSweep))
		// After the deadline: remove sets an earlier one when it
		// empties the set, and then this stops.
		p.mu.Lock()
		if len(p.byToken) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		p.rc.Read(func(fd uintptr) bool {
			n, err := syscall.EpollWait(int(fd), events, 0)
			if err == syscall.EINTR {
				return true // look again
			}
			if err != nil || n <= 0 {
				return false // wait for the set to be readable
			}
			p.mu.Lock()
			for _, ev := range events[:n] {
				token := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
				if resume := p.remove(token); resume != nil {
					start = append(start, resume)
				}
			}
			p.mu.Unlock()
			return true
		})
		sweep := time.Since(lastSweep) >= tcpSweep
		p.mu.Lock()
		if sweep {
			lastSweep = time.Now()
			for token, w := range p.byToken {
				// A closed connection refuses a deadline, without a
				// system call.
				if w.c.SetReadDeadline(time.Time{}) != nil {
					start = append(start, p.remove(token))
				}
			}
		}
		p.mu.Unlock()
		for i, resume := range start {
			go resume()
			start[i] = nil
		}
		start = start[:0]
	}
}

// isParked reports whether c is parked.
func (p *tcpPoller) isParked(c *net.TCPConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.byConn[c]
	return ok
}
