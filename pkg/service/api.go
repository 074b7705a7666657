package service

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/batcher"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry"
)

// MaxBodyBytes is the largest request body the API reads.
const MaxBodyBytes = 1 << 20

//go:embed openapi.json
var openAPIDoc []byte

//go:embed status.html
var statusPage []byte

//go:embed status.js
var statusJS []byte

//go:embed status.css
var statusCSS []byte

// OpenAPI returns the API's OpenAPI 3 document.
func OpenAPI() []byte { return bytes.Clone(openAPIDoc) }

// Route is one registered route: a method and a ServeMux path pattern.
type Route struct {
	Method  string
	Pattern string
	// Auth says whether the route needs the bearer token.
	Auth bool
}

// api is the HTTP layer over a Manager.
type api struct {
	m        *Manager
	log      zerolog.Logger
	token    []byte
	metrics  *metrics
	gatherer prometheus.Gatherer
	ready    func() bool
	// done is closed when the service shuts down, to end event streams.
	done      <-chan struct{}
	heartbeat time.Duration
	routes    []Route
	// hosts are the Host values accepted beside the loopback names.
	hosts []string
	// unixSocket: the API listens on a Unix socket only.
	unixSocket bool
}

// handler builds the API's mux.
func (a *api) handler(metricsOn bool) http.Handler {
	mux := http.NewServeMux()
	add := func(method, pattern string, auth bool, h http.HandlerFunc) {
		a.routes = append(a.routes, Route{Method: method, Pattern: pattern, Auth: auth})
		var hh http.Handler = h
		if auth {
			hh = a.auth(hh)
		}
		mux.Handle(method+" "+pattern, a.instrument(pattern, hh))
	}
	add("POST", "/v1/jobs", true, a.createJob)
	add("GET", "/v1/jobs", true, a.listJobs)
	add("GET", "/v1/jobs/{id}", true, a.getJob)
	add("DELETE", "/v1/jobs/{id}", true, a.deleteJob)
	add("POST", "/v1/jobs/{id}/pause", true, a.pause)
	add("POST", "/v1/jobs/{id}/resume", true, a.resume)
	add("POST", "/v1/jobs/{id}/cancel", true, a.cancel)
	add("POST", "/v1/jobs/{id}/retry-failed", true, a.retryFailed)
	add("GET", "/v1/jobs/{id}/failed", true, a.failed)
	add("GET", "/v1/jobs/{id}/dry-run", true, a.dryRun)
	add("GET", "/v1/jobs/{id}/events", true, a.events)
	add("GET", "/v1/jobs/{id}/heap-profile", true, a.heapProfile)
	add("GET", "/v1/openapi.json", false, a.openapi)
	if metricsOn {
		add("GET", "/metrics", true, metricsHandler(a.gatherer).ServeHTTP)
	}
	add("GET", "/healthz", false, a.healthz)
	add("GET", "/readyz", false, a.readyz)
	add("GET", "/{$}", false, a.page)
	add("GET", "/status.js", false, a.asset("text/javascript; charset=utf-8", statusJS))
	add("GET", "/status.css", false, a.asset("text/css; charset=utf-8", statusCSS))
	// Anything else is a JSON 404 (or 405 from the mux's own matching).
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such route: "+r.URL.Path, nil)
	})
	return a.defend(mux)
}

// Routes lists the routes the API registers.
func (a *api) Routes() []Route { return a.routes }

// statusRecorder remembers the status code for the metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// instrument times requests and logs them. The log line has the route
// pattern, never the headers, the query or the body, so no token or
// secret can reach it.
func (a *api) instrument(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		d := time.Since(start)
		a.metrics.observeRequest(route, r.Method, rec.code, d)
		ev := a.log.Debug()
		if rec.code >= 500 {
			ev = a.log.Warn()
		}
		ev.Str("method", r.Method).Str("route", route).Int("code", rec.code).Dur("duration", d).Msg("api request")
	})
}

// auth checks the bearer token in constant time. With no token configured
// (loopback only), every request passes.
func (a *api) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(a.token) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		// The scheme is case-insensitive (RFC 9110, section 11.1).
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), a.token) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="memvisor"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid bearer token is required (Authorization: Bearer <token>)", nil)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// apiError is the body of every error response.
type apiError struct {
	Error errorBody `json:"error"`
}

type errorBody struct {
	Code    string           `json:"code"`
	Message string           `json:"message"`
	Fields  []job.FieldError `json:"fields,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		code, data = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"encode response"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(data, '\n'))
}

func writeError(w http.ResponseWriter, code int, kind, msg string, fields []job.FieldError) {
	writeJSON(w, code, apiError{Error: errorBody{Code: kind, Message: msg, Fields: fields}})
}

// fail maps an error to its status code.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	var in *InputError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the body is larger than %d bytes", MaxBodyBytes), nil)
	case errors.As(err, &in):
		writeError(w, http.StatusBadRequest, "invalid", "the job spec has bad fields", in.Fields)
	case errors.Is(err, registry.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no job "+strconv.Quote(r.PathValue("id")), nil)
	case errors.Is(err, registry.ErrExists):
		writeError(w, http.StatusConflict, "exists", err.Error(), nil)
	case errors.Is(err, registry.ErrActivePair):
		writeError(w, http.StatusConflict, "active_pair", err.Error(), nil)
	case errors.Is(err, registry.ErrQueueFull):
		writeError(w, http.StatusTooManyRequests, "queue_full", err.Error()+"; retry when queued jobs have started (max_queued_jobs)", nil)
	case errors.Is(err, ErrConflict):
		writeError(w, http.StatusConflict, "conflict", err.Error(), nil)
	case errors.Is(err, registry.ErrBadCursor):
		writeError(w, http.StatusBadRequest, "invalid", err.Error(), []job.FieldError{{Field: "cursor", Message: "not a cursor this API returned"}})
	case errors.Is(err, ErrClosed):
		writeError(w, http.StatusServiceUnavailable, "shutting_down", err.Error(), nil)
	case errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusGatewayTimeout, "timeout", err.Error(), nil)
	default:
		a.log.Error().Err(err).Str("route", r.Pattern).Msg("api request failed")
		writeError(w, http.StatusInternalServerError, "internal", err.Error(), nil)
	}
}

func (a *api) createJob(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	rec, err := a.m.Submit(body)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/jobs/"+rec.ID)
	writeJSON(w, http.StatusCreated, map[string]any{"id": rec.ID, "status": rec.Status})
}

func (a *api) listJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opt := registry.ListOptions{Cursor: q.Get("cursor"), Limit: 50}
	var fe job.Errors
	if s := q.Get("status"); s != "" {
		for _, part := range strings.Split(s, ",") {
			st := registry.Status(strings.TrimSpace(part))
			if !st.Valid() {
				fe.Add("status", "must be one of queued, running, paused, completed, failed, cancelled (got %q)", part)
				continue
			}
			opt.Statuses = append(opt.Statuses, st)
		}
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 500 {
			fe.Add("limit", "must be between 1 and 500 (got %q)", l)
		}
		opt.Limit = n
	}
	if len(fe) > 0 {
		writeError(w, http.StatusBadRequest, "invalid", "bad query parameters", fe)
		return
	}
	jobs, next, err := a.m.List(opt)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var nc *string
	if next != "" {
		nc = &next
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": jobs, "next_cursor": nc})
}

func (a *api) getJob(w http.ResponseWriter, r *http.Request) {
	v, err := a.m.Get(r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (a *api) deleteJob(w http.ResponseWriter, r *http.Request) {
	if err := a.m.Delete(r.PathValue("id")); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) pause(w http.ResponseWriter, r *http.Request) {
	a.transition(w, r, func(ctx context.Context, id string) (JobView, error) { return a.m.Pause(ctx, id) })
}

func (a *api) cancel(w http.ResponseWriter, r *http.Request) {
	a.transition(w, r, func(ctx context.Context, id string) (JobView, error) { return a.m.Cancel(ctx, id) })
}

func (a *api) resume(w http.ResponseWriter, r *http.Request) {
	a.transition(w, r, func(_ context.Context, id string) (JobView, error) { return a.m.Resume(id) })
}

func (a *api) retryFailed(w http.ResponseWriter, r *http.Request) {
	a.transition(w, r, func(_ context.Context, id string) (JobView, error) { return a.m.RetryFailed(id) })
}

func (a *api) transition(w http.ResponseWriter, r *http.Request, fn func(context.Context, string) (JobView, error)) {
	v, err := fn(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": v.ID, "status": v.Status, "job": v})
}

// The bounds of a page of failed items: a line longer than maxFailedLine
// is sent clipped, as {"clipped_line", "offset", "bytes"}, and a page
// stops before the item that would take it past maxFailedPage bytes (it
// always holds at least one item), with a cursor to the rest.
const (
	maxFailedLine = 64 << 10
	maxFailedPage = 4 << 20
)

// failed streams a page of failed.jsonl from a byte offset. It reads only
// the lines of the page, never the whole file, and holds at most one
// clipped line in memory.
func (a *api) failed(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	dir, err := a.m.jobDir(id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	var fe job.Errors
	var offset int64
	if c := q.Get("cursor"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n < 0 {
			fe.Add("cursor", "not a cursor this API returned")
		}
		offset = n
	}
	limit := 100
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			fe.Add("limit", "must be between 1 and 1000 (got %q)", l)
		}
		limit = n
	}
	if len(fe) > 0 {
		writeError(w, http.StatusBadRequest, "invalid", "bad query parameters", fe)
		return
	}
	if a.m.fleet != nil {
		a.failedFleet(w, r, id, offset, limit)
		return
	}
	f, err := os.Open(filepath.Join(dir, batcher.FailedFile))
	if errors.Is(err, os.ErrNotExist) {
		writeJSON(w, http.StatusOK, map[string]any{"items": []any{}, "next_cursor": nil})
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("open failed items: %w", err))
		return
	}
	defer f.Close()
	if offset > 0 {
		// A cursor is the offset of a line start: the byte before it is
		// a newline.
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, offset-1); err != nil || b[0] != '\n' {
			writeError(w, http.StatusBadRequest, "invalid", "bad query parameters", []job.FieldError{{Field: "cursor", Message: "not a cursor this API returned"}})
			return
		}
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		a.fail(w, r, fmt.Errorf("seek failed items: %w", err))
		return
	}
	br := bufio.NewReaderSize(f, 64<<10)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	out := bufio.NewWriterSize(w, 32<<10)
	defer out.Flush()
	out.WriteString(`{"items":[`)
	written := 0
	pos, n := offset, 0
	more := false
	for n < limit {
		line, complete, size, err := readLine(br, maxFailedLine)
		if !complete {
			// EOF, or a last line still being written: stop before it.
			break
		}
		if err != nil {
			break
		}
		item := bytes.TrimSpace(line)
		if len(item) == 0 {
			pos += size
			continue
		}
		switch {
		case size > maxFailedLine+1:
			item, _ = json.Marshal(map[string]any{"clipped_line": string(bytes.ToValidUTF8(item, nil)), "offset": pos, "bytes": size})
		case !json.Valid(item) || item[0] != '{':
			item, _ = json.Marshal(map[string]any{"invalid_line": string(item), "offset": pos})
		}
		if n > 0 && written+len(item) > maxFailedPage {
			// The page is full: the next one starts at this line.
			more = true
			break
		}
		if n > 0 {
			out.WriteByte(',')
		}
		out.Write(item)
		written += len(item) + 1
		pos += size
		n++
	}
	if n == limit {
		if _, err := br.Peek(1); err == nil {
			more = true
		}
	}
	out.WriteString(`],"next_cursor":`)
	if more {
		fmt.Fprintf(out, `"%d"`, pos)
	} else {
		out.WriteString("null")
	}
	fmt.Fprintf(out, `,"end_offset":%d}`+"\n", pos)
}

// readLine reads one newline-terminated line, keeping at most limit bytes
// of it. complete is false at EOF without a newline. size is the bytes the
// line took in the file.
func readLine(br *bufio.Reader, limit int) (line []byte, complete bool, size int64, err error) {
	for {
		chunk, err := br.ReadSlice('\n')
		size += int64(len(chunk))
		if len(line) < limit {
			line = append(line, chunk[:min(len(chunk), limit-len(line))]...)
		}
		switch {
		case err == nil:
			return line, true, size, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, false, size, err
		}
	}
}

// maxDryRun bounds the dry-run preview served.
const maxDryRun = 64 << 20

func (a *api) dryRun(w http.ResponseWriter, r *http.Request) {
	dir, err := a.m.jobDir(r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	f, err := os.Open(filepath.Join(dir, batcher.DryRunFile))
	if errors.Is(err, os.ErrNotExist) {
		writeError(w, http.StatusNotFound, "not_found", "job "+r.PathValue("id")+" has no dry-run preview: it is not a dry run, or its preview is not written yet", nil)
		return
	}
	if err != nil {
		a.fail(w, r, fmt.Errorf("open dry-run preview: %w", err))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() > maxDryRun {
		a.fail(w, r, fmt.Errorf("dry-run preview is over %d bytes", maxDryRun))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.Header().Set("Cache-Control", "no-store")
	_, _ = io.Copy(w, f)
}

func (a *api) heapProfile(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	p, err := a.m.heapProfile(ctx, r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="heap-`+r.PathValue("id")+`.pb.gz"`)
	_, _ = w.Write(p)
}

// events streams a job's events as Server-Sent Events. The first event,
// "snapshot", carries the job's view and its recent memory history; a
// finished job's stream ends after it with "done".
func (a *api) events(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	h, sub, first, finished, err := a.m.subscribe(id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	defer h.unsubscribe(sub)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(append([]byte("retry: 2000\n"), first...)); err != nil {
		return
	}
	if finished {
		v, _ := a.m.Get(id)
		_, _ = w.Write(encodeFrame(0, EventDone, eventData{Time: time.Now(), Job: id, View: &v}))
		_ = rc.Flush()
		return
	}
	if err := rc.Flush(); err != nil {
		return
	}
	hb := time.NewTicker(a.heartbeat)
	defer hb.Stop()
	for {
		select {
		case frame := <-sub.ch:
			if _, err := w.Write(frame); err != nil {
				return
			}
			// Write what else is queued before one flush.
			for drained := false; !drained; {
				select {
				case f := <-sub.ch:
					if _, err := w.Write(f); err != nil {
						return
					}
				default:
					drained = true
				}
			}
			if err := rc.Flush(); err != nil {
				return
			}
		case <-sub.gone:
			// Send what is still queued (the done event among it).
			for {
				select {
				case f := <-sub.ch:
					if _, err := w.Write(f); err != nil {
						return
					}
				default:
					_ = rc.Flush()
					return
				}
			}
		case <-hb.C:
			if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-a.done:
			return
		}
	}
}

func (a *api) openapi(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDoc)
}

func (a *api) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *api) readyz(w http.ResponseWriter, _ *http.Request) {
	if !a.ready() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready"})
		return
	}
	if err := a.m.ping(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "registry unavailable"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (a *api) page(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", pageCSP)
	_, _ = w.Write(statusPage)
}

// asset serves an embedded file of the status page.
func (a *api) asset(contentType string, data []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(data)
	}
}
