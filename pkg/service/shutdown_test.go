package service_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/service"
	"github.com/memvisor/memvisor/pkg/service/servicetest"
)

// brokenListener fails every Accept after the first call, as a listener
// whose socket was closed under it does.
type brokenListener struct{ net.Listener }

var errBroken = errors.New("listener broke")

func (b brokenListener) Accept() (net.Conn, error) { return nil, errBroken }

// TestServeReturnsWhenTheHTTPServerFails is the review's shutdown-hang
// finding: an HTTP server that fails ends Serve, with its error, although
// the context is still live.
func TestServeReturnsWhenTheHTTPServerFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- service.Serve(ctx, cfg, service.WithListener(brokenListener{ln}),
			service.WithFactory(servicetest.Factory(servicetest.Options{})))
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errBroken) {
			t.Errorf("Serve returned %v, want the listener's error", err)
		}
	case <-time.After(20 * time.Second):
		cancel()
		<-done
		t.Fatal("Serve did not return after its HTTP server failed")
	}
}
