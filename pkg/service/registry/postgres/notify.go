package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// noticeChannel is the one LISTEN/NOTIFY channel of a fleet.
const noticeChannel = "memvisor_jobs"

// maxNoticeBytes keeps a notice under PostgreSQL's 8000-byte payload limit.
const maxNoticeBytes = 7900

// NoticeResync is the Kind of the notice a Listener delivers after it has
// reconnected: notices sent while it was away are lost, so its reader
// re-reads what it cares about from the tables.
const NoticeResync = "resync"

// Notice is a message from one node to the others about a job: a request
// to its owner (pause, cancel), or an event for SSE clients on other
// nodes. Notices are hints that something changed; the registry and the
// leases stay the truth, which a reader re-reads when in doubt.
type Notice struct {
	JobID string `json:"job_id"`
	Kind  string `json:"kind"`
	// Node is the sender; Notify fills it in.
	Node string          `json:"node"`
	Data json.RawMessage `json:"data,omitempty"`
}

// ErrNoticeTooLarge means a notice does not fit in a NOTIFY payload.
var ErrNoticeTooLarge = errors.New("notice larger than a NOTIFY payload")

// Notify sends n to every node's Listener, this node's included, when the
// surrounding transaction (here: the statement) commits.
func (s *Store) Notify(ctx context.Context, n Notice) error {
	n.Node = s.node
	data, err := json.Marshal(n)
	if err != nil {
		return fmt.Errorf("encode notice: %w", err)
	}
	if len(data) > maxNoticeBytes {
		return fmt.Errorf("notify %s of job %s: %w (%d bytes, at most %d)", n.Kind, n.JobID, ErrNoticeTooLarge, len(data), maxNoticeBytes)
	}
	if _, err := s.pool.Exec(ctx, "SELECT pg_notify($1, $2)", noticeChannel, string(data)); err != nil {
		return fmt.Errorf("notify %s of job %s: %w", n.Kind, n.JobID, err)
	}
	return nil
}

// Listener receives the fleet's notices on a connection of its own, taken
// out of the pool, and reconnects with backoff when it is lost.
type Listener struct {
	c      chan Notice
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// C delivers the notices. It is buffered; when the reader falls behind,
// new notices are dropped and a resync notice takes their place once
// there is room.
func (l *Listener) C() <-chan Notice { return l.c }

// Close stops listening and waits for the listening goroutine.
func (l *Listener) Close() {
	l.cancel()
	l.wg.Wait()
}

// Listen starts a Listener. It returns once the first LISTEN is in place,
// so that no notice sent after Listen returns is missed.
func (s *Store) Listen(ctx context.Context) (*Listener, error) {
	lctx, cancel := context.WithCancel(context.Background())
	l := &Listener{c: make(chan Notice, 256), cancel: cancel}
	first := make(chan error, 1)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		s.listen(lctx, l, first)
	}()
	select {
	case err := <-first:
		if err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	case <-ctx.Done():
		l.Close()
		return nil, ctx.Err()
	}
}

func (s *Store) listen(ctx context.Context, l *Listener, first chan<- error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 100*time.Millisecond, 5*time.Second
	connected := false
	resync := false
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, l, &resync, func() {
			bo.Reset()
			if !connected {
				connected = true
				first <- nil
			} else {
				resync = true
			}
		})
		if ctx.Err() != nil {
			return
		}
		if !connected {
			first <- fmt.Errorf("listen for notices: %w", err)
			return
		}
		s.log.Warn().Err(err).Msg("notice listener lost its connection; reconnecting")
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.NextBackOff()):
		}
	}
}

// listenOnce holds one connection until it fails or ctx ends.
func (s *Store) listenOnce(ctx context.Context, l *Listener, resync *bool, ready func()) error {
	pc, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The LISTEN must not go back to the pool with the connection.
	conn := pc.Hijack()
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+noticeChannel); err != nil {
		return err
	}
	ready()
	for {
		if *resync {
			select {
			case l.c <- Notice{Kind: NoticeResync, Node: s.node}:
				*resync = false
			default:
			}
		}
		msg, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		var n Notice
		if err := json.Unmarshal([]byte(msg.Payload), &n); err != nil {
			s.log.Warn().Err(err).Msg("notice listener: undecodable notice dropped")
			continue
		}
		select {
		case l.c <- n:
		default:
			*resync = true
		}
	}
}
