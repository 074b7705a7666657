package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/memvisor/memvisor/internal/cliflag"
	"github.com/memvisor/memvisor/pkg/service"
)

const serveUsage = `Usage: supervisor serve [flags]

Runs memvisor as a long-running service: the HTTP API v1 (JSON, with the
OpenAPI document at /v1/openapi.json), a job queue of at most
max_concurrent_jobs running jobs, each under its own supervisor and runner,
Prometheus metrics at /metrics, and a status page at /.

Jobs are kept in a registry under state_dir: they survive a restart, and
the jobs that were running resume at the next start. Under systemd
(Type=notify) it sends READY=1 once it listens, WATCHDOG=1 from its main
loop, and STOPPING=1 and EXTEND_TIMEOUT_USEC while it drains.

SIGTERM or SIGINT stops taking requests and drains every running job, so
that its runner commits a checkpoint; the next start resumes them.

The configuration file is YAML, strict (an unknown key is an error);
deploy/config.yaml is an annotated example. The environment overrides it:
MEMVISOR_LISTEN, MEMVISOR_STATE_DIR, MEMVISOR_RUNNER_PATH,
MEMVISOR_LOG_LEVEL, MEMVISOR_LOG_FORMAT, and MEMVISOR_TOKEN, the API's
bearer token (else systemd's credential api-token, else auth.token_file).
Flags override both. The API always needs the token: with none configured,
the first start writes one to STATE_DIR/api-token (mode 0600) and logs
where it is. The service refuses to listen beyond loopback without a
configured token, and answers only Host names that are loopback, the
listen address, or in allowed_hosts.

Jobs that come through the API are confined: their files must lie under
allowed_roots (default STATE_DIR/data), they may name only the Podio API
bases in podio_api_urls and the credentials in allowed_credentials, and
fault injection needs allow_inject. A refused job gets 400 naming each
field. The run command is a trusted local tool and is not confined.

Flags:
`

func serveCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("supervisor serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "the configuration file at `FILE` (default: built-in defaults)")
	listen := fs.String("listen", "", "listen on `ADDR`, host:port or unix:/path (overrides listen)")
	stateDir := fs.String("state-dir", "", "keep the registry and the jobs' state in `DIR` (overrides state_dir)")
	runner := fs.String("runner", "", "the runner executable at `PATH` (overrides runner_path)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (overrides log.level)")
	logFormat := fs.String("log-format", "", "json, console, or auto (overrides log.format)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), serveUsage)
		fs.PrintDefaults()
	}
	err := cliflag.Parse(fs, func() error { return fs.Parse(args) }, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return exitError(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "supervisor serve: unexpected argument %q\n", fs.Arg(0))
		return exitError(2)
	}
	var cfg service.Config
	if *configPath != "" {
		cfg, err = service.Load(*configPath)
	} else {
		cfg, err = service.Parse(strings.NewReader(""))
	}
	if err != nil {
		fmt.Fprintf(stderr, "supervisor serve: %v\n", err)
		return exitError(2)
	}
	for dst, v := range map[*string]string{&cfg.Listen: *listen, &cfg.StateDir: *stateDir, &cfg.RunnerPath: *runner,
		&cfg.Log.Level: *logLevel, &cfg.Log.Format: *logFormat} {
		if v != "" {
			*dst = v
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "supervisor serve: %v\n", err)
		return exitError(2)
	}
	// The runners inherit this process's environment: the token is not
	// theirs to see.
	os.Unsetenv(service.EnvToken)
	// The service's heap is mostly short-lived request garbage; a lower GC
	// target keeps its RSS small at a little CPU. GOGC still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	log := service.NewLogger(stderr, cfg.Log)
	if err := service.Serve(ctx, cfg, service.WithLogger(log)); err != nil {
		log.Error().Err(err).Msg("serve stopped")
		return exitError(1)
	}
	return nil
}
