// Command podio-emulator serves the emulated Podio API of pkg/podio/podioemu
// on 127.0.0.1, for the examples and for tests that run it as a process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

const usage = `usage: podio-emulator [flags]

Serves the subset of the Podio API that memvisor uses (OAuth tokens, apps,
item filter, count, get, get by external_id, create, update, files, comments),
with Podio's JSON shapes, error bodies, two rate-limit tiers and their headers,
until SIGINT or SIGTERM. Other routes are answered 404.

Seed it with --seed FILE.jsonl, one object per line:

  {"kind":"client","client_id":"memvisor","client_secret":"s3cret"}
  {"kind":"user","username":"ada@example.com","password":"pw"}
  {"kind":"app","app_id":30001,"app_token":"tok","name":"Leads","fields":[
     {"external_id":"title","type":"text","label":"Title"},
     {"external_id":"status","type":"category","label":"Status","options":[{"text":"Open"},{"text":"Won"}]}]}
  {"kind":"file","file_id":7,"name":"contract.pdf","size":1048576,"seed":42}
  {"kind":"item","app_id":30001,"external_id":"crm-1","fields":{"title":"Acme","status":["Open"]},
   "file_ids":[7],"comments":[{"value":"Called them"}]}

A file's content is size bytes generated from its seed, so large files cost
no memory or disk until they are uploaded.

Field types: text, number, money, date, category, question, app, contact,
email, phone, location, duration, progress, calculation, image.

It prints "listening on URL" on stdout. GET /_emulator/stats returns its
counters and GET /_emulator/dump?app_id=N an app's items as JSONL (one GET
/item body per line); --dump APP_ID=FILE writes the same at exit.

Faults are drawn from a generator seeded by --random-seed: --error-rate
answers 500/502/503 (for writes, --error-after-commit of them after the
write is made); --lost-rate makes a write and then drops the connection;
--burst-every N starts a burst of --burst-length 420s every N calls;
--expire-tokens-every N expires every token every N calls; --latency and
--latency-jitter delay each call. --rate-limit N per --rate-window is the
quota per user or app and API key.

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "podio-emulator:", err)
		}
		os.Exit(2)
	}
}

type dumps map[int64]string

func (d dumps) String() string { return fmt.Sprint(map[int64]string(d)) }

func (d dumps) Set(v string) error {
	app, file, ok := strings.Cut(v, "=")
	id, err := strconv.ParseInt(app, 10, 64)
	if !ok || err != nil || file == "" {
		return fmt.Errorf("want APP_ID=FILE, got %q", v)
	}
	d[id] = file
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("podio-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on (127.0.0.1 only is advised)")
	addrFile := fs.String("addr-file", "", "write the base URL to this file once listening")
	seed := fs.String("seed", "", "JSONL file of clients, users, apps and items")
	rseed := fs.Uint64("random-seed", 1, "seed of the fault generator")
	ttl := fs.Duration("token-ttl", 8*time.Hour, "lifetime of an access token")
	limit := fs.Int("rate-limit", 0, "calls allowed per window per caller (0: no quota); Podio's is 1000")
	limited := fs.Int("limited-rate-limit", 0, `calls marked "Rate limited" allowed per window (0: a quarter of --rate-limit, as Podio's 250)`)
	refreshTTL := fs.Duration("refresh-ttl", 0, "lifetime of a refresh token (0: no expiry)")
	zone := fs.String("user-zone", "Europe/Copenhagen", "time zone of the users: dates are answered in it and in *_utc keys")
	fileDir := fs.String("file-dir", "", "directory for uploaded files (default: a temporary one, removed at exit)")
	window := fs.Duration("rate-window", time.Hour, "quota window")
	var f podioemu.Faults
	fs.Float64Var(&f.ServerErrorRate, "error-rate", 0, "share of calls answered 5xx")
	fs.Float64Var(&f.ServerErrorAfterCommit, "error-after-commit", 0, "share of the 5xx to writes that come after the write")
	fs.Float64Var(&f.LostResponseRate, "lost-rate", 0, "share of writes made whose answer is dropped")
	fs.IntVar(&f.RateLimitBurstEvery, "burst-every", 0, "start a burst of 420s every N calls")
	fs.IntVar(&f.RateLimitBurstLength, "burst-length", 3, "420s per burst")
	fs.IntVar(&f.RateLimitBurstWait, "burst-wait", 1, "seconds a burst's 420s ask to wait")
	fs.DurationVar(&f.Latency, "latency", 0, "delay of every call")
	fs.DurationVar(&f.LatencyJitter, "latency-jitter", 0, "extra random delay, up to this")
	fs.IntVar(&f.ExpireTokensEvery, "expire-tokens-every", 0, "expire every access token every N calls")
	dump := dumps{}
	fs.Var(dump, "dump", "APP_ID=FILE: write the app's items at exit (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	loc, err := time.LoadLocation(*zone)
	if err != nil {
		return fmt.Errorf("--user-zone: %w", err)
	}
	s := podioemu.New(podioemu.Config{Seed: *rseed, TokenTTL: *ttl, RefreshTTL: *refreshTTL, RateLimit: *limit,
		LimitedRateLimit: *limited, RateWindow: *window, UserZone: loc, FileDir: *fileDir, Faults: f})
	if *seed != "" {
		file, err := os.Open(*seed)
		if err != nil {
			return err
		}
		err = s.LoadJSONL(file)
		file.Close()
		if err != nil {
			return err
		}
	}
	url, err := s.Start(*listen)
	if err != nil {
		return err
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(url+"\n"), 0o644); err != nil {
			s.Close()
			return err
		}
	}
	fmt.Fprintln(stdout, "listening on", url)
	<-ctx.Done()
	err = s.Close()
	for app, file := range dump {
		out, ferr := os.Create(file)
		if ferr == nil {
			ferr = errors.Join(s.DumpJSONL(out, app), out.Close())
		}
		err = errors.Join(err, ferr)
	}
	return err
}
