package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/rs/zerolog"
)

// hclogTimeLayout is the layout go-plugin's client parses @timestamp with
// (go-plugin v1.8.0, log_entry.go).
const hclogTimeLayout = "2006-01-02T15:04:05.000000Z07:00"

// NewRunnerLogger returns the runner's logger. It writes one JSON object
// per line to w (the runner's stderr) with the keys go-plugin's client
// reads as an hclog line: @level, @message and @timestamp. Every other
// field of a zerolog event arrives in the supervisor as a key/value pair
// of that line, so the runner logs with zerolog as usual.
//
// It changes no zerolog globals: the renaming is done by the writer, at
// write time, and the timestamp is taken when the line is written.
func NewRunnerLogger(w io.Writer) zerolog.Logger {
	return zerolog.New(&hclogJSONWriter{w: w, now: time.Now})
}

// hclogJSONWriter rewrites zerolog's JSON lines into hclog's JSON form.
type hclogJSONWriter struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
}

func (h *hclogJSONWriter) Write(p []byte) (int, error) {
	out, err := hclogLine(p, h.now())
	if err != nil {
		// Not a JSON object: pass it on, and go-plugin logs it verbatim.
		out = p
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, err := h.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

func hclogLine(p []byte, now time.Time) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(p, &m); err != nil {
		return nil, err
	}
	out := make(map[string]any, len(m)+3)
	level := "info"
	msg := ""
	for k, v := range m {
		switch k {
		case zerolog.LevelFieldName:
			var s string
			_ = json.Unmarshal(v, &s)
			level = hclogLevelName(s)
		case zerolog.MessageFieldName:
			_ = json.Unmarshal(v, &msg)
		case zerolog.TimestampFieldName:
			// Replaced by @timestamp.
		default:
			out[k] = v
		}
	}
	out["@level"] = level
	out["@message"] = msg
	out["@timestamp"] = now.Format(hclogTimeLayout)
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func hclogLevelName(zl string) string {
	switch zl {
	case "trace", "debug", "info", "warn", "error":
		return zl
	case "fatal", "panic":
		return "error"
	}
	return "info"
}

// hclogBridge is an hclog.Logger that writes into a zerolog.Logger. The
// go-plugin client logs its own lines, and every line the runner writes
// to stderr, through it. Derived loggers share pid, which is set once the
// runner process has started.
type hclogBridge struct {
	zl      zerolog.Logger
	name    string
	implied []any
	level   *atomic.Int32 // an hclog.Level
	pid     *atomic.Int64
}

var _ hclog.Logger = (*hclogBridge)(nil)

func newHCLogBridge(zl zerolog.Logger, pid *atomic.Int64) *hclogBridge {
	lvl := new(atomic.Int32)
	lvl.Store(int32(hclogLevelOf(zl)))
	return &hclogBridge{zl: zl, level: lvl, pid: pid}
}

// hclogLevelOf maps the logger's effective zerolog level to hclog's.
func hclogLevelOf(zl zerolog.Logger) hclog.Level {
	l := zl.GetLevel()
	if g := zerolog.GlobalLevel(); g > l {
		l = g
	}
	switch {
	case l <= zerolog.TraceLevel:
		return hclog.Trace
	case l == zerolog.DebugLevel:
		return hclog.Debug
	case l == zerolog.InfoLevel:
		return hclog.Info
	case l == zerolog.WarnLevel:
		return hclog.Warn
	case l == zerolog.ErrorLevel, l == zerolog.FatalLevel, l == zerolog.PanicLevel:
		return hclog.Error
	}
	return hclog.Off
}

func (b *hclogBridge) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	if level < hclog.Level(b.level.Load()) {
		return
	}
	var ev *zerolog.Event
	switch level {
	case hclog.Trace:
		ev = b.zl.Trace()
	case hclog.Debug:
		ev = b.zl.Debug()
	case hclog.Info:
		ev = b.zl.Info()
	case hclog.Warn:
		ev = b.zl.Warn()
	default:
		ev = b.zl.Error()
	}
	if ev == nil {
		return
	}
	name := b.name
	if name == "" {
		name = "go-plugin"
	}
	ev = ev.Str("logger", name)
	if pid := b.pid.Load(); pid != 0 {
		ev = ev.Int64("runner_pid", pid)
	}
	addPairs(ev, b.implied)
	addPairs(ev, args)
	ev.Msg(msg)
}

// addPairs adds hclog's alternating keys and values to ev. The
// "timestamp" go-plugin appends to every runner line is dropped: zerolog
// stamps the line itself.
func addPairs(ev *zerolog.Event, args []any) {
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			ev.Interface("EXTRA_VALUE_AT_END", args[i])
			return
		}
		key := fmt.Sprint(args[i])
		if key == "timestamp" {
			continue
		}
		switch v := args[i+1].(type) {
		case string:
			ev.Str(key, v)
		case bool:
			ev.Bool(key, v)
		case float64:
			// JSON numbers decode as float64; keep integers integers.
			if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
				ev.Int64(key, int64(v))
			} else {
				ev.Float64(key, v)
			}
		case int:
			ev.Int(key, v)
		case int64:
			ev.Int64(key, v)
		case error:
			ev.Str(key, v.Error())
		case nil:
			ev.Interface(key, nil)
		default:
			ev.Interface(key, v)
		}
	}
}

func (b *hclogBridge) Trace(msg string, args ...any) { b.Log(hclog.Trace, msg, args...) }
func (b *hclogBridge) Debug(msg string, args ...any) { b.Log(hclog.Debug, msg, args...) }
func (b *hclogBridge) Info(msg string, args ...any)  { b.Log(hclog.Info, msg, args...) }
func (b *hclogBridge) Warn(msg string, args ...any)  { b.Log(hclog.Warn, msg, args...) }
func (b *hclogBridge) Error(msg string, args ...any) { b.Log(hclog.Error, msg, args...) }

func (b *hclogBridge) IsTrace() bool { return hclog.Level(b.level.Load()) <= hclog.Trace }
func (b *hclogBridge) IsDebug() bool { return hclog.Level(b.level.Load()) <= hclog.Debug }
func (b *hclogBridge) IsInfo() bool  { return hclog.Level(b.level.Load()) <= hclog.Info }
func (b *hclogBridge) IsWarn() bool  { return hclog.Level(b.level.Load()) <= hclog.Warn }
func (b *hclogBridge) IsError() bool { return hclog.Level(b.level.Load()) <= hclog.Error }

func (b *hclogBridge) ImpliedArgs() []any { return b.implied }

func (b *hclogBridge) With(args ...any) hclog.Logger {
	c := *b
	c.implied = append(append([]any(nil), b.implied...), args...)
	return &c
}

func (b *hclogBridge) Name() string { return b.name }

func (b *hclogBridge) Named(name string) hclog.Logger {
	c := *b
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (b *hclogBridge) ResetNamed(name string) hclog.Logger {
	c := *b
	c.name = name
	return &c
}

func (b *hclogBridge) SetLevel(level hclog.Level) { b.level.Store(int32(level)) }

func (b *hclogBridge) GetLevel() hclog.Level { return hclog.Level(b.level.Load()) }

func (b *hclogBridge) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(b.StandardWriter(opts), "", 0)
}

func (b *hclogBridge) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := hclog.Info
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = opts.ForceLevel
	}
	return &lineLogger{fn: func(line string) { b.Log(level, line) }}
}

// lineLogger calls fn for every complete line written to it.
type lineLogger struct {
	mu  sync.Mutex
	buf []byte
	fn  func(line string)
	n   atomic.Int64 // bytes written
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.n.Add(int64(len(p)))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string(l.buf[:i]), "\r")
		l.buf = l.buf[i+1:]
		if line != "" {
			l.fn(line)
		}
	}
	// A line without its newline is still logged once it grows large.
	if len(l.buf) > 64<<10 {
		l.fn(string(l.buf))
		l.buf = nil
	}
	return len(p), nil
}

// Flush logs a last line that had no newline.
func (l *lineLogger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.fn(string(l.buf))
		l.buf = nil
	}
}
