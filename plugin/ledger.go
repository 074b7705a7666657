package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "github.com/memvisor/memvisor/plugin/proto"
)

// Ledger is the supervisor's side of a fleet job's durable state (see
// docs/design.md, "Growing past one host"). A runner given one commits
// every checkpoint, and the failure records written before it, through it
// first, and writes to the target only while Lease says it may. Every
// method fails with ErrFenced once the job's lease is lost: another node
// may own the job, so the runner must not write again.
type Ledger interface {
	// AppendFailures records failure-log lines (one JSON object each)
	// after the log's first after records, dropping any records beyond
	// after first (a runner that stopped before its commit left them).
	AppendFailures(ctx context.Context, after int64, lines [][]byte) error
	// Commit records a checkpoint (JSON-encoded as checkpoint.Checkpoint)
	// and cuts the failure records to the first failedRecords.
	Commit(ctx context.Context, checkpoint []byte, failedRecords int64) error
	// Lease says how long from now the runner may still write.
	Lease(ctx context.Context) (time.Duration, error)
}

// ErrFenced is a Ledger's answer once the job's lease is lost.
var ErrFenced = errors.New("job lease lost: another node may own the job, so this runner must not write")

// serveLedger serves l to the runner through the broker and returns the
// broker id that StartRequest carries. The service stops with the
// broker, when the runner's client closes.
func serveLedger(b *goplugin.GRPCBroker, l Ledger) uint32 {
	id := b.NextId()
	go b.AcceptAndServe(id, func(opts []grpc.ServerOption) *grpc.Server {
		// One failure record may be as large as a source item.
		s := grpc.NewServer(append(opts, grpc.MaxRecvMsgSize(maxLedgerMsg))...)
		pb.RegisterLedgerServer(s, &ledgerServer{l: l})
		return s
	})
	return id
}

// maxLedgerMsg bounds one Ledger request.
const maxLedgerMsg = 64 << 20

// dialLedger connects to the supervisor's Ledger that id names.
func dialLedger(b *goplugin.GRPCBroker, id uint32) (Ledger, error) {
	conn, err := b.DialWithOptions(id, grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxLedgerMsg)))
	if err != nil {
		return nil, fmt.Errorf("connect to the supervisor's ledger: %w", err)
	}
	return &ledgerClient{c: pb.NewLedgerClient(conn)}, nil
}

type ledgerServer struct {
	pb.UnimplementedLedgerServer
	l Ledger
}

func (s *ledgerServer) AppendFailures(ctx context.Context, r *pb.AppendFailuresRequest) (*pb.AppendFailuresResponse, error) {
	if err := s.l.AppendFailures(ctx, r.GetAfter(), r.GetLines()); err != nil {
		return nil, toStatus(err)
	}
	return &pb.AppendFailuresResponse{}, nil
}

func (s *ledgerServer) Commit(ctx context.Context, r *pb.CommitRequest) (*pb.CommitResponse, error) {
	if err := s.l.Commit(ctx, r.GetCheckpoint(), r.GetFailedRecords()); err != nil {
		return nil, toStatus(err)
	}
	return &pb.CommitResponse{}, nil
}

func (s *ledgerServer) Lease(ctx context.Context, _ *pb.LeaseRequest) (*pb.LeaseResponse, error) {
	d, err := s.l.Lease(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.LeaseResponse{ValidFor: durationToPB(d)}, nil
}

type ledgerClient struct{ c pb.LedgerClient }

func ledgerErr(method string, err error) error {
	return fmt.Errorf("call ledger %s: %w", method, fromStatus(err))
}

func (c *ledgerClient) AppendFailures(ctx context.Context, after int64, lines [][]byte) error {
	if _, err := c.c.AppendFailures(ctx, &pb.AppendFailuresRequest{After: after, Lines: lines}); err != nil {
		return ledgerErr("AppendFailures", err)
	}
	return nil
}

func (c *ledgerClient) Commit(ctx context.Context, checkpoint []byte, failedRecords int64) error {
	if _, err := c.c.Commit(ctx, &pb.CommitRequest{Checkpoint: checkpoint, FailedRecords: failedRecords}); err != nil {
		return ledgerErr("Commit", err)
	}
	return nil
}

func (c *ledgerClient) Lease(ctx context.Context) (time.Duration, error) {
	r, err := c.c.Lease(ctx, &pb.LeaseRequest{})
	if err != nil {
		return 0, ledgerErr("Lease", err)
	}
	return r.GetValidFor().AsDuration(), nil
}
