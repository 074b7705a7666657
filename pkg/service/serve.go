package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/internal/version"
	"github.com/memvisor/memvisor/pkg/service/confine"
	"github.com/memvisor/memvisor/pkg/service/registry"
	"github.com/memvisor/memvisor/pkg/service/registry/postgres"
	"github.com/memvisor/memvisor/pkg/supervise"
)

// Log keys used by the service.
const (
	keyJob = "job"
)

// Option changes how Serve runs.
type Option func(*options)

type options struct {
	log       zerolog.Logger
	now       func() time.Time
	factory   Factory
	listener  net.Listener
	onListen  func(net.Addr)
	notify    Notifier
	registry  *prometheus.Registry
	heartbeat time.Duration
	tick      time.Duration
	onRoutes  func([]Route)
	reg       Registry
}

// WithRegistry makes Serve keep its jobs in reg, which the caller opened
// and closes, instead of the bbolt file in the state dir.
func WithRegistry(reg Registry) Option { return func(o *options) { o.reg = reg } }

// WithLogger sets the logger; the default discards everything.
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock that stamps jobs.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithFactory sets how a job's Supervisor is built. The default is
// SuperviseFactory with cfg.RunnerPath, or DefaultRunnerPath.
func WithFactory(f Factory) Option { return func(o *options) { o.factory = f } }

// WithListener serves on l instead of listening on cfg.Listen.
func WithListener(l net.Listener) Option { return func(o *options) { o.listener = l } }

// OnListen is called with the address once the service listens and has
// recovered its jobs (the moment it tells systemd READY=1).
func OnListen(fn func(net.Addr)) Option { return func(o *options) { o.onListen = fn } }

// WithNotifier sets the systemd notifier; the default speaks sd_notify
// when NOTIFY_SOCKET is set and does nothing otherwise.
func WithNotifier(n Notifier) Option { return func(o *options) { o.notify = n } }

// WithPrometheus sets the registry /metrics serves; the default is a new
// one with the Go and process collectors.
func WithPrometheus(r *prometheus.Registry) Option { return func(o *options) { o.registry = r } }

// WithHeartbeat sets how often an idle event stream sends a comment.
func WithHeartbeat(d time.Duration) Option { return func(o *options) { o.heartbeat = d } }

// WithTick sets the main loop's period (watchdog, pruning, progress
// persistence); the default is a second, or half the watchdog interval if
// that is shorter.
func WithTick(d time.Duration) Option { return func(o *options) { o.tick = d } }

// OnRoutes receives the registered routes, for tests that compare them to
// the OpenAPI document.
func OnRoutes(fn func([]Route)) Option { return func(o *options) { o.onRoutes = fn } }

// Serve runs the service until ctx is cancelled, then drains the running
// jobs (at most cfg.ShutdownTimeout) and returns. It returns an error if it
// cannot start: a bad config, a registry that another process holds, an
// address in use.
func Serve(ctx context.Context, cfg Config, opts ...Option) error {
	o := options{log: zerolog.Nop(), now: time.Now, heartbeat: 15 * time.Second, tick: time.Second}
	for _, fn := range opts {
		fn(&o)
	}
	if o.notify == nil {
		o.notify = SystemdNotifier()
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := o.log
	if o.factory == nil {
		runner := cfg.RunnerPath
		if runner == "" {
			p, err := DefaultRunnerPath()
			if err != nil {
				return err
			}
			runner = p
		}
		if _, err := os.Stat(runner); err != nil {
			return fmt.Errorf("runner_path: %w (build it with make build, or set runner_path)", err)
		}
		o.factory = SuperviseFactory(runner)
	}
	if abs, err := filepath.Abs(cfg.StateDir); err == nil {
		cfg.StateDir = abs
	}
	if err := os.MkdirAll(cfg.jobsDir(), 0o750); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if len(cfg.AllowedRoots) == 0 {
		if err := os.MkdirAll(cfg.dataDir(), 0o750); err != nil {
			return fmt.Errorf("create data dir: %w", err)
		}
	}
	policy, err := confine.New(confine.Rules{
		AllowedRoots: cfg.allowedRoots(), StateDir: cfg.StateDir, DataDir: cfg.dataDir(), PodioAPIURLs: cfg.PodioAPIURLs,
		Credentials: cfg.AllowedCredentials, AllowInject: cfg.AllowInject,
		Fleet: cfg.Fleet.Enabled(), SharedRoots: cfg.SharedRoots,
	})
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings() {
		log.Warn().Msg(w)
	}
	tokenPath, created, err := cfg.ensureToken()
	if err != nil {
		return err
	}
	switch {
	case created:
		log.Info().Str("token_file", tokenPath).Msg("no API token was configured: made one; clients send it as Authorization: Bearer <token>")
	case tokenPath != "":
		log.Info().Str("token_file", tokenPath).Msg("API token from the state directory")
	}
	reg := o.reg
	var fleetStore *postgres.Store
	if reg == nil && cfg.Fleet.Enabled() {
		fleetStore, err = openFleet(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer fleetStore.Close()
		reg = fleetStore
		log.Info().Str("node_id", cfg.Fleet.NodeID).Dur("lease_ttl", cfg.Fleet.LeaseTTL.D()).Str("state_dir", cfg.StateDir).
			Msg("fleet mode: jobs, queue, leases, checkpoints and failure records in PostgreSQL; state_dir is this node's own")
	}
	if reg == nil {
		db, err := registry.Open(cfg.registryPath(), 2*time.Second)
		if err != nil {
			return err
		}
		defer db.Close()
		reg = db
	}

	promReg := o.registry
	if promReg == nil {
		promReg = newRegistry()
	}
	var mgr *Manager
	mt := newMetrics(promReg, func() map[string]supervise.Status { return mgr.activeSnapshots() })
	mgr = newManager(cfg, reg, policy, o.factory, log, o.now, mt)
	if fleetStore != nil {
		mgr.fleet = &fleet{store: fleetStore, node: fleetStore.Node()}
	}

	ln := o.listener
	if ln == nil {
		ln, err = listen(cfg.Listen)
		if err != nil {
			return err
		}
	}
	var ready atomic.Bool
	done := make(chan struct{})
	a := &api{
		m: mgr, log: log, token: []byte(string(cfg.token)), metrics: mt, gatherer: promReg,
		ready: ready.Load, done: done, heartbeat: o.heartbeat, hosts: allowedHosts(cfg),
		unixSocket: ln.Addr().Network() == "unix",
	}
	srv := &http.Server{
		Handler:           a.handler(cfg.Metrics),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	if o.onRoutes != nil {
		o.onRoutes(a.Routes())
	}
	if err := mgr.recover(); err != nil {
		ln.Close()
		mgr.cancel()
		return err
	}

	log.Info().Str("listen", ln.Addr().String()).Str("state_dir", cfg.StateDir).Int("max_concurrent_jobs", cfg.MaxConcurrentJobs).
		Bool("auth", cfg.HasToken()).Bool("metrics", cfg.Metrics).Str("version", version.Version).Msg("service listening")

	tick := o.tick
	wd, wdOn := o.notify.WatchdogInterval()
	if wdOn && wd/2 < tick {
		tick = wd / 2
	}
	var g run.Group
	// The HTTP server.
	g.Add(func() error {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve http: %w", err)
		}
		return nil
	}, func(error) {
		close(done)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	// The main loop: watchdog, pruning, progress persistence.
	loopCtx, loopCancel := context.WithCancel(context.Background())
	g.Add(func() error {
		ready.Store(true)
		o.notify.Notify("READY=1\nSTATUS=listening on " + ln.Addr().String())
		if o.onListen != nil {
			o.onListen(ln.Addr())
		}
		retention := cfg.Retention.D()
		t := time.NewTicker(tick)
		defer t.Stop()
		lastPrune := time.Time{}
		for {
			if err := mgr.ping(); err != nil {
				log.Error().Err(err).Msg("registry does not answer; withholding the watchdog")
			} else if wdOn {
				o.notify.Notify("WATCHDOG=1")
			}
			if now := o.now(); now.Sub(lastPrune) > time.Hour {
				lastPrune = now
				if n, err := mgr.prune(now.Add(-retention)); err != nil {
					log.Error().Err(err).Msg("prune finished jobs")
				} else if n > 0 {
					log.Info().Int("jobs", n).Dur("retention", retention).Msg("pruned finished jobs")
				}
			}
			mgr.persistProgress()
			if mgr.fleet != nil {
				// Jobs posted to other nodes, and jobs whose node died.
				mgr.schedule()
			}
			select {
			case <-loopCtx.Done():
				return nil
			case <-t.C:
			}
		}
	}, func(error) { loopCancel() })
	// The context: cancellation starts the shutdown, and the end of
	// another actor interrupts it.
	g.Add(run.ContextHandler(ctx))

	runErr := g.Run()
	if ctx.Err() != nil && errors.Is(runErr, ctx.Err()) {
		// A requested stop, not a failure.
		runErr = nil
	}

	// Drain: tell systemd, stop the jobs so that each runner commits.
	ready.Store(false)
	timeout := cfg.ShutdownTimeout.D()
	o.notify.Notify("STOPPING=1\nSTATUS=draining running jobs")
	log.Info().Dur("timeout", timeout).Msg("service stopping")
	dctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	extend := func() {
		// Ask for the rest of the drain budget plus a margin.
		usec := (timeout + 5*time.Second).Microseconds()
		o.notify.Notify(fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d", usec))
		if wdOn {
			o.notify.Notify("WATCHDOG=1")
		}
	}
	if err := mgr.close(dctx, extend); err != nil {
		log.Error().Err(err).Msg("jobs still running at the end of the drain; they resume at the next start")
	}
	if network, addr, err := ListenAddr(cfg.Listen); err == nil && network == "unix" && o.listener == nil {
		_ = os.Remove(addr)
	}
	log.Info().Msg("service stopped")
	return runErr
}

// listen opens the configured address; a stale Unix socket is removed
// first (the registry's lock already proves no other service uses it).
func listen(listen string) (net.Listener, error) {
	network, addr, err := ListenAddr(listen)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
			return nil, fmt.Errorf("create socket dir: %w", err)
		}
		_ = os.Remove(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", listen, err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("chmod socket %s: %w", addr, err)
		}
	}
	return ln, nil
}
