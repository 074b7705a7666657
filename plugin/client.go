package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"github.com/rs/zerolog"
)

// ClientOptions says how to start a runner process.
type ClientOptions struct {
	// Path is the runner executable.
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Env is the runner's whole environment; go-plugin adds its own
	// variables. Nil means SanitizeEnv(os.Environ(), 0).
	Env []string
	// Dir is the runner's working directory; empty means the caller's.
	Dir string
	// Logger receives go-plugin's lines and the runner's, each tagged
	// with runner_pid. Give it the job id as a field.
	Logger zerolog.Logger
	// StartTimeout bounds the handshake; 0 means 30 s.
	StartTimeout time.Duration
	// OnStart, if set, is called with the pid as soon as the process has
	// started, before the handshake: the moment to write a pidfile.
	OnStart func(pid int)
}

// ErrStart wraps every failure to start a runner.
var ErrStart = errors.New("start runner")

// killGrace is how long Kill lets go-plugin's graceful close run (it
// waits 2 s itself) before it sends SIGKILL.
const killGrace = 3 * time.Second

// Client is one runner process and its Runner. A Client cannot be started
// again: every start of a runner is a new Client.
type Client struct {
	pc     *goplugin.Client
	procP  atomic.Pointer[process] // set by go-plugin's start goroutine
	proc   *process                // set once Start has returned
	runner Runner
	stdout *lineLogger
	stderr *lineLogger
}

// Start starts one runner process, completes the handshake with AutoMTLS,
// and dispenses its Runner. Cancelling ctx during the handshake kills
// the process.
func Start(ctx context.Context, opts ClientOptions) (*Client, error) {
	if opts.Path == "" {
		return nil, fmt.Errorf("%w: no runner path", ErrStart)
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	env := opts.Env
	if env == nil {
		env = SanitizeEnv(os.Environ(), 0)
	}
	pid := new(atomic.Int64)
	hl := newHCLogBridge(opts.Logger, pid)
	c := &Client{}
	// Writes to os.Stdout and os.Stderr after Serve reach us over
	// go-plugin's stdio stream.
	c.stdout = &lineLogger{fn: func(line string) {
		hl.Named("stdout").Warn("runner wrote to stdout, which is reserved for the go-plugin handshake", "line", line)
	}}
	c.stderr = &lineLogger{fn: func(line string) { hl.Named("stderr").Info(line) }}
	c.pc = goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig: Handshake,
		Plugins:         PluginMap(nil),
		RunnerFunc: func(l hclog.Logger, cmd *exec.Cmd, _ string) (runner.Runner, error) {
			p, err := newProcess(opts, env, cmd.Env, pid, hl.Named("stdout"), l)
			if err == nil {
				c.procP.Store(p)
			}
			return p, err
		},
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           hl,
		StartTimeout:     opts.StartTimeout,
		SkipHostEnv:      true,
		SyncStdout:       c.stdout,
		SyncStderr:       c.stderr,
	})

	type result struct {
		raw any
		err error
	}
	ch := make(chan result, 1)
	go func() {
		rpc, err := c.pc.Client()
		if err != nil {
			ch <- result{err: err}
			return
		}
		raw, err := rpc.Dispense(PluginName)
		ch <- result{raw: raw, err: err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		if p := c.procP.Load(); p != nil {
			p.kill()
		}
		<-ch
		c.proc = c.procP.Load()
		c.KillNow()
		return nil, fmt.Errorf("%w %s: %w", ErrStart, opts.Path, ctx.Err())
	}
	c.proc = c.procP.Load()
	if r.err != nil {
		c.KillNow()
		if c.proc != nil && c.proc.exited() {
			if werr := c.proc.exitErr(); werr != nil {
				return nil, fmt.Errorf("%w %s: %w (%v)", ErrStart, opts.Path, r.err, werr)
			}
		}
		return nil, fmt.Errorf("%w %s: %w", ErrStart, opts.Path, r.err)
	}
	rn, ok := r.raw.(Runner)
	if !ok {
		c.KillNow()
		return nil, fmt.Errorf("%w %s: dispensed %T, not a Runner", ErrStart, opts.Path, r.raw)
	}
	c.runner = rn
	return c, nil
}

// Runner returns the runner's RPC interface.
func (c *Client) Runner() Runner { return c.runner }

// PID returns the runner's process id.
func (c *Client) PID() int { return c.proc.pid() }

// Exited reports whether the runner process has exited.
func (c *Client) Exited() bool { return c.proc.exited() }

// Done is closed when the runner process has exited.
func (c *Client) Done() <-chan struct{} { return c.proc.done }

// ExitErr says how the process ended once Done is closed: nil for exit
// status 0, else an *exec.ExitError ("exit status 2", "signal: killed").
func (c *Client) ExitErr() error { return c.proc.exitErr() }

// StdoutBytes counts the bytes the runner wrote to stdout after the
// handshake line. A well-behaved runner writes none.
func (c *Client) StdoutBytes() int64 { return c.proc.strayStdout.Load() + c.stdout.n.Load() }

// Kill closes the connection, which asks the runner to exit, and waits
// for the process. go-plugin gives it 2 s before SIGKILL; if the runner
// is too wedged to answer even the close, Kill sends SIGKILL itself after
// 3 s. Drain the runner over RPC before calling Kill. Kill is safe to
// call more than once.
func (c *Client) Kill() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.pc.Kill()
	}()
	select {
	case <-done:
	case <-time.After(killGrace):
		if c.proc != nil {
			c.proc.kill()
		}
		<-done
	}
	c.flush()
}

// KillNow sends SIGKILL at once and waits for the process: for a runner
// that is hung or over its memory ceiling.
func (c *Client) KillNow() {
	if c.proc != nil {
		c.proc.kill()
	}
	c.pc.Kill()
	c.flush()
}

func (c *Client) flush() {
	c.stdout.Flush()
	c.stderr.Flush()
}

// process runs the runner executable for go-plugin (a runner.Runner). It
// is ours rather than go-plugin's internal one so that the pid is known
// the moment the process starts, the exit status is kept, stray stdout is
// counted, and the runner gets a process group of its own (a Ctrl-C at
// the terminal reaches the supervisor, which drains the runner, and not
// the runner directly).
type process struct {
	cmd     *exec.Cmd
	stdout  io.ReadCloser
	stderr  io.ReadCloser
	log     hclog.Logger
	pidVal  *atomic.Int64
	onStart func(pid int)

	strayStdout atomic.Int64
	done        chan struct{}

	mu      sync.Mutex
	proc    *os.Process // set once started
	killed  bool        // kill was asked for, perhaps before the start
	waitErr error
}

var _ runner.Runner = (*process)(nil)

func newProcess(opts ClientOptions, env, pluginEnv []string, pid *atomic.Int64, strayLog hclog.Logger, l hclog.Logger) (*process, error) {
	cmd := exec.Command(opts.Path, opts.Args...)
	cmd.Dir = opts.Dir
	// go-plugin's variables last, so they win over inherited ones.
	cmd.Env = append(append([]string(nil), env...), pluginEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &process{cmd: cmd, log: l, pidVal: pid, onStart: opts.OnStart, done: make(chan struct{})}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.stdout = &handshakeReader{r: out, stray: &p.strayStdout, log: strayLog}
	if p.stderr, err = cmd.StderrPipe(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) Start(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.killed {
		close(p.done)
		return errors.New("runner killed before it started")
	}
	if err := p.cmd.Start(); err != nil {
		close(p.done)
		return err
	}
	p.proc = p.cmd.Process
	p.pidVal.Store(int64(p.proc.Pid))
	p.log.Debug("runner process started", "path", p.cmd.Path)
	if p.onStart != nil {
		p.onStart(p.proc.Pid)
	}
	return nil
}

func (p *process) Wait(context.Context) error {
	err := p.cmd.Wait()
	p.mu.Lock()
	p.waitErr = err
	p.mu.Unlock()
	close(p.done)
	return err
}

func (p *process) Kill(context.Context) error {
	p.kill()
	return nil
}

func (p *process) kill() {
	p.mu.Lock()
	p.killed = true
	proc := p.proc
	p.mu.Unlock()
	if proc == nil {
		return
	}
	if err := proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.log.Debug("kill runner", "error", err)
	}
}

func (p *process) pid() int { return int(p.pidVal.Load()) }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

func (p *process) Stdout() io.ReadCloser { return p.stdout }
func (p *process) Stderr() io.ReadCloser { return p.stderr }

// Name is the name go-plugin gives the runner's stderr logger.
func (p *process) Name() string { return "runner" }

func (p *process) ID() string {
	if pid := p.pid(); pid != 0 {
		return strconv.Itoa(pid)
	}
	return ""
}

func (p *process) Diagnose(context.Context) string {
	return "the runner did not complete the go-plugin handshake: check that " + p.cmd.Path +
		" is a memvisor runner built for this machine, and that nothing writes to its stdout before it serves"
}

func (p *process) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (p *process) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}

// handshakeReader passes the runner's stdout to go-plugin and counts the
// bytes after the first line, the handshake.
type handshakeReader struct {
	r         io.ReadCloser
	stray     *atomic.Int64
	log       hclog.Logger
	handshake bool
}

func (h *handshakeReader) Read(b []byte) (int, error) {
	n, err := h.r.Read(b)
	data := b[:n]
	if !h.handshake {
		for i, c := range data {
			if c == '\n' {
				h.handshake = true
				data = data[i+1:]
				break
			}
		}
		if !h.handshake {
			data = nil
		}
	}
	if len(data) > 0 {
		h.stray.Add(int64(len(data)))
		h.log.Warn("runner wrote to stdout after the handshake", "bytes", len(data))
	}
	return n, err
}

func (h *handshakeReader) Close() error { return h.r.Close() }
