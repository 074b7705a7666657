package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/memvisor/memvisor/plugin/proto"
)

// RunnerPlugin is the go-plugin glue for Runner: it registers the gRPC
// server in the runner process and builds the gRPC client in the
// supervisor. Only gRPC is offered.
type RunnerPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	// Impl is the runner's implementation; the supervisor leaves it nil.
	Impl Runner
}

var _ goplugin.GRPCPlugin = (*RunnerPlugin)(nil)

// GRPCServer registers the Runner service on s.
func (p *RunnerPlugin) GRPCServer(b *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("register runner service: no Runner implementation")
	}
	pb.RegisterRunnerServer(s, &GRPCServer{Impl: p.Impl, broker: b})
	return nil
}

// GRPCClient returns a Runner that calls the runner process over conn.
func (p *RunnerPlugin) GRPCClient(_ context.Context, b *goplugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	c := NewGRPCClient(conn)
	c.broker = b
	return c, nil
}

// PluginMap is the plugin set both sides hand to go-plugin. The runner
// passes its implementation; the supervisor passes nil.
func PluginMap(impl Runner) map[string]goplugin.Plugin {
	return map[string]goplugin.Plugin{PluginName: &RunnerPlugin{Impl: impl}}
}

// GRPCClient is the supervisor's side of the Runner service.
type GRPCClient struct {
	client pb.RunnerClient
	// broker serves a StartRequest's Ledger to the runner; nil outside
	// go-plugin, where a Ledger cannot be passed.
	broker *goplugin.GRPCBroker
}

var _ Runner = (*GRPCClient)(nil)

// NewGRPCClient returns a Runner that calls the service over conn.
func NewGRPCClient(conn grpc.ClientConnInterface) *GRPCClient {
	return &GRPCClient{client: pb.NewRunnerClient(conn)}
}

func callErr(ctx context.Context, method string, err error) error {
	re := fromStatus(err)
	// gRPC reports a closed connection as Canceled; unless the caller
	// cancelled, the runner is gone.
	var r *RemoteError
	if errors.As(re, &r) && r.Code == codes.Canceled && ctx.Err() == nil {
		r.kind = ErrUnavailable
	}
	return fmt.Errorf("call runner %s: %w", method, re)
}

// Start implements Runner.
func (c *GRPCClient) Start(ctx context.Context, req StartRequest) error {
	r := &pb.StartRequest{Job: req.Job, Resume: req.Resume, RetryFailed: req.RetryFailed, Guard: guardToPB(req.Guard)}
	if req.Ledger != nil {
		if c.broker == nil {
			return errors.New("call runner Start: a ledger needs go-plugin's broker")
		}
		r.Ledger = serveLedger(c.broker, req.Ledger)
	}
	_, err := c.client.Start(ctx, r)
	if err != nil {
		return callErr(ctx, "Start", err)
	}
	return nil
}

// Stats implements Runner.
func (c *GRPCClient) Stats(ctx context.Context) (Stats, error) {
	r, err := c.client.Stats(ctx, &pb.StatsRequest{})
	if err != nil {
		return Stats{}, callErr(ctx, "Stats", err)
	}
	return statsFromPB(r), nil
}

// GC implements Runner.
func (c *GRPCClient) GC(ctx context.Context) (GCResult, error) {
	r, err := c.client.GC(ctx, &pb.GCRequest{})
	if err != nil {
		return GCResult{}, callErr(ctx, "GC", err)
	}
	return GCResult{
		Before:   memFromPB(r.GetBefore()),
		After:    memFromPB(r.GetAfter()),
		Duration: r.GetDuration().AsDuration(),
	}, nil
}

// Drain implements Runner.
func (c *GRPCClient) Drain(ctx context.Context, deadline time.Time) (Checkpoint, error) {
	r, err := c.client.Drain(ctx, &pb.DrainRequest{Deadline: timeToPB(deadline)})
	if err != nil {
		return Checkpoint{}, callErr(ctx, "Drain", err)
	}
	return checkpointFromPB(r), nil
}

// Cancel implements Runner.
func (c *GRPCClient) Cancel(ctx context.Context) error {
	if _, err := c.client.Cancel(ctx, &pb.CancelRequest{}); err != nil {
		return callErr(ctx, "Cancel", err)
	}
	return nil
}

// Watch implements Runner. It returns nil when the runner ends the stream
// (the job ended), and fn's error when fn fails.
func (c *GRPCClient) Watch(ctx context.Context, fn func(Event) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.client.Watch(ctx, &pb.WatchRequest{})
	if err != nil {
		return callErr(ctx, "Watch", err)
	}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return callErr(ctx, "Watch", err)
		}
		if err := fn(eventFromPB(m)); err != nil {
			return err
		}
	}
}

// HeapProfile implements Runner.
func (c *GRPCClient) HeapProfile(ctx context.Context) ([]byte, error) {
	r, err := c.client.HeapProfile(ctx, &pb.HeapProfileRequest{})
	if err != nil {
		return nil, callErr(ctx, "HeapProfile", err)
	}
	return r.GetProfile(), nil
}

// SetGuard implements Runner.
func (c *GRPCClient) SetGuard(ctx context.Context, g Guard) error {
	if _, err := c.client.SetGuard(ctx, guardToPB(g)); err != nil {
		return callErr(ctx, "SetGuard", err)
	}
	return nil
}

// GRPCServer is the runner's side of the Runner service: it hands each
// call to Impl with the call's context.
type GRPCServer struct {
	pb.UnimplementedRunnerServer
	Impl   Runner
	broker *goplugin.GRPCBroker
}

var _ pb.RunnerServer = (*GRPCServer)(nil)

// Start implements pb.RunnerServer.
func (s *GRPCServer) Start(ctx context.Context, r *pb.StartRequest) (*pb.StartResponse, error) {
	req := StartRequest{Job: r.GetJob(), Resume: r.GetResume(), RetryFailed: r.GetRetryFailed(), Guard: guardFromPB(r.GetGuard())}
	if id := r.GetLedger(); id != 0 {
		if s.broker == nil {
			return nil, toStatus(fmt.Errorf("%w: the start names a ledger, but this runner has no broker", ErrInvalidJob))
		}
		l, err := dialLedger(s.broker, id)
		if err != nil {
			return nil, toStatus(err)
		}
		req.Ledger = l
	}
	err := s.Impl.Start(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.StartResponse{}, nil
}

// Stats implements pb.RunnerServer.
func (s *GRPCServer) Stats(ctx context.Context, _ *pb.StatsRequest) (*pb.StatsResponse, error) {
	st, err := s.Impl.Stats(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return statsToPB(st), nil
}

// GC implements pb.RunnerServer.
func (s *GRPCServer) GC(ctx context.Context, _ *pb.GCRequest) (*pb.GCResponse, error) {
	r, err := s.Impl.GC(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GCResponse{
		Before:   memToPB(r.Before),
		After:    memToPB(r.After),
		Duration: durationpb.New(r.Duration),
	}, nil
}

// Drain implements pb.RunnerServer.
func (s *GRPCServer) Drain(ctx context.Context, r *pb.DrainRequest) (*pb.Checkpoint, error) {
	deadline := timeFromPB(r.GetDeadline())
	if deadline.IsZero() {
		if d, ok := ctx.Deadline(); ok {
			deadline = d
		}
	}
	cp, err := s.Impl.Drain(ctx, deadline)
	if err != nil {
		return nil, toStatus(err)
	}
	return checkpointToPB(cp), nil
}

// Cancel implements pb.RunnerServer.
func (s *GRPCServer) Cancel(ctx context.Context, _ *pb.CancelRequest) (*pb.CancelResponse, error) {
	if err := s.Impl.Cancel(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &pb.CancelResponse{}, nil
}

// Watch implements pb.RunnerServer.
func (s *GRPCServer) Watch(_ *pb.WatchRequest, stream grpc.ServerStreamingServer[pb.Event]) error {
	err := s.Impl.Watch(stream.Context(), func(ev Event) error {
		return stream.Send(eventToPB(ev))
	})
	return toStatus(err)
}

// HeapProfile implements pb.RunnerServer.
func (s *GRPCServer) HeapProfile(ctx context.Context, _ *pb.HeapProfileRequest) (*pb.HeapProfileResponse, error) {
	p, err := s.Impl.HeapProfile(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.HeapProfileResponse{Profile: p}, nil
}

// SetGuard implements pb.RunnerServer.
func (s *GRPCServer) SetGuard(ctx context.Context, g *pb.Guard) (*pb.SetGuardResponse, error) {
	if err := s.Impl.SetGuard(ctx, guardFromPB(g)); err != nil {
		return nil, toStatus(err)
	}
	return &pb.SetGuardResponse{}, nil
}

func guardToPB(g Guard) *pb.Guard {
	return &pb.Guard{GcBytes: g.GCBytes, DrainBytes: g.DrainBytes}
}

func guardFromPB(g *pb.Guard) Guard {
	return Guard{GCBytes: g.GetGcBytes(), DrainBytes: g.GetDrainBytes()}
}

// durationToPB maps zero to an unset field.
func durationToPB(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// timeToPB maps the zero time to an unset field, so "no time" survives
// the round trip.
func timeToPB(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func timeFromPB(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func progressToPB(p Progress) *pb.Progress {
	return &pb.Progress{
		Total:            p.Total,
		TotalKnown:       p.TotalKnown,
		Processed:        p.Processed,
		Created:          p.Created,
		Updated:          p.Updated,
		Skipped:          p.Skipped,
		Failed:           p.Failed,
		Batches:          p.Batches,
		Offset:           p.Offset,
		ItemsPerSec:      p.ItemsPerSec,
		RateLimitedUntil: timeToPB(p.RateLimitedUntil),
		ErrorsByCategory: p.ErrorsByCategory,
	}
}

func progressFromPB(p *pb.Progress) Progress {
	if p == nil {
		return Progress{}
	}
	return Progress{
		Total:            p.GetTotal(),
		TotalKnown:       p.GetTotalKnown(),
		Processed:        p.GetProcessed(),
		Created:          p.GetCreated(),
		Updated:          p.GetUpdated(),
		Skipped:          p.GetSkipped(),
		Failed:           p.GetFailed(),
		Batches:          p.GetBatches(),
		Offset:           p.GetOffset(),
		ItemsPerSec:      p.GetItemsPerSec(),
		RateLimitedUntil: timeFromPB(p.GetRateLimitedUntil()),
		ErrorsByCategory: p.GetErrorsByCategory(),
	}
}

func statsToPB(s Stats) *pb.StatsResponse {
	return &pb.StatsResponse{
		State:            string(s.State),
		Error:            s.Error,
		Pid:              int64(s.PID),
		RssBytes:         s.RSSBytes,
		HeapObjectsBytes: s.HeapObjectsBytes,
		HeapGoalBytes:    s.HeapGoalBytes,
		TotalMappedBytes: s.TotalMappedBytes,
		GcCount:          s.GCCount,
		GcCpuFraction:    s.GCCPUFraction,
		CacheEntries:     s.CacheEntries,
		CacheBytes:       s.CacheBytes,
		Progress:         progressToPB(s.Progress),
		GuardGcs:         s.GuardGCs,
	}
}

func statsFromPB(s *pb.StatsResponse) Stats {
	return Stats{
		State:            State(s.GetState()),
		Error:            s.GetError(),
		PID:              int(s.GetPid()),
		RSSBytes:         s.GetRssBytes(),
		HeapObjectsBytes: s.GetHeapObjectsBytes(),
		HeapGoalBytes:    s.GetHeapGoalBytes(),
		TotalMappedBytes: s.GetTotalMappedBytes(),
		GCCount:          s.GetGcCount(),
		GCCPUFraction:    s.GetGcCpuFraction(),
		CacheEntries:     s.GetCacheEntries(),
		CacheBytes:       s.GetCacheBytes(),
		Progress:         progressFromPB(s.GetProgress()),
		GuardGCs:         s.GetGuardGcs(),
	}
}

func memToPB(m MemFigures) *pb.MemFigures {
	return &pb.MemFigures{RssBytes: m.RSSBytes, HeapObjectsBytes: m.HeapObjectsBytes, TotalMappedBytes: m.TotalMappedBytes}
}

func memFromPB(m *pb.MemFigures) MemFigures {
	return MemFigures{RSSBytes: m.GetRssBytes(), HeapObjectsBytes: m.GetHeapObjectsBytes(), TotalMappedBytes: m.GetTotalMappedBytes()}
}

func checkpointToPB(c Checkpoint) *pb.Checkpoint {
	return &pb.Checkpoint{
		Batches: c.Batches, Offset: c.Offset, Done: c.Done, Progress: progressToPB(c.Progress),
		DrainDuration: durationToPB(c.DrainDuration), Reason: string(c.Reason),
	}
}

func checkpointFromPB(c *pb.Checkpoint) Checkpoint {
	return Checkpoint{
		Batches: c.GetBatches(), Offset: c.GetOffset(), Done: c.GetDone(), Progress: progressFromPB(c.GetProgress()),
		DrainDuration: c.GetDrainDuration().AsDuration(), Reason: DrainReason(c.GetReason()),
	}
}

func eventToPB(e Event) *pb.Event {
	return &pb.Event{
		Kind:     string(e.Kind),
		Time:     timeToPB(e.Time),
		State:    string(e.State),
		Progress: progressToPB(e.Progress),
		Error:    e.Error,
		Reason:   string(e.Reason),

		DrainDuration: durationToPB(e.DrainDuration),
	}
}

func eventFromPB(e *pb.Event) Event {
	return Event{
		Kind:     EventKind(e.GetKind()),
		Time:     timeFromPB(e.GetTime()),
		State:    State(e.GetState()),
		Progress: progressFromPB(e.GetProgress()),
		Error:    e.GetError(),
		Reason:   DrainReason(e.GetReason()),

		DrainDuration: e.GetDrainDuration().AsDuration(),
	}
}
