package connector

import (
	"context"
	"errors"
)

// ErrNotSent means a write gave up before anything of it could reach the
// target: the target is unchanged, and the item can be written later as
// if it had never been tried.
var ErrNotSent = errors.New("write not sent")

type holdKey struct{}

// WithHold returns a context for writes that should give up, with
// ErrNotSent, once hold is closed, if they are still waiting to be sent:
// at a rate-limit gate, or in a backoff before a retry that nothing of
// the write may have taken effect yet. A write already sent completes as
// usual, and the context itself is never cancelled by hold. A drain uses
// it, so that it waits for writes in flight, not for writes queued behind
// a rate limit (docs/design.md, "Graceful restart protocol").
func WithHold(ctx context.Context, hold <-chan struct{}) context.Context {
	return context.WithValue(ctx, holdKey{}, hold)
}

// Hold returns the hold channel of ctx, or nil, which never fires.
func Hold(ctx context.Context) <-chan struct{} {
	h, _ := ctx.Value(holdKey{}).(<-chan struct{})
	return h
}
