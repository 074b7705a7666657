package plugin

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors a Runner returns. They cross the gRPC boundary as a
// status code plus an ErrorInfo detail naming the sentinel, so errors.Is
// works on the supervisor's side as it does inside the runner.
var (
	// ErrNotStarted: the call needs a started job (Drain, Cancel, GC
	// before Start).
	ErrNotStarted = errors.New("job not started")
	// ErrAlreadyStarted: Start was called twice on one runner.
	ErrAlreadyStarted = errors.New("job already started")
	// ErrCheckpointExists: Start without Resume on a job that already has
	// a checkpoint. Start it with Resume, or delete its state directory.
	ErrCheckpointExists = errors.New("job already has a checkpoint; start it with resume")
	// ErrInvalidJob: the job spec in StartRequest does not decode or does
	// not validate.
	ErrInvalidJob = errors.New("invalid job")
	// ErrJobLocked: another runner holds the job's lock.
	ErrJobLocked = errors.New("job is locked by another runner")
	// ErrFinished: the job has already ended, so the call has nothing to do.
	ErrFinished = errors.New("job already finished")
	// ErrUnimplemented: the runner does not offer this call.
	ErrUnimplemented = errors.New("not implemented by the runner")
	// ErrUnavailable: the runner cannot be reached, usually because its
	// process has exited.
	ErrUnavailable = errors.New("runner unavailable")
)

// errorDomain tags the ErrorInfo details this package writes.
const errorDomain = "memvisor.plugin.v1"

// sentinels maps each sentinel to its gRPC code and its reason on the wire.
var sentinels = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{ErrNotStarted, codes.FailedPrecondition, "NOT_STARTED"},
	{ErrAlreadyStarted, codes.AlreadyExists, "ALREADY_STARTED"},
	{ErrCheckpointExists, codes.FailedPrecondition, "CHECKPOINT_EXISTS"},
	{ErrInvalidJob, codes.InvalidArgument, "INVALID_JOB"},
	{ErrJobLocked, codes.Aborted, "JOB_LOCKED"},
	{ErrFinished, codes.FailedPrecondition, "FINISHED"},
	{ErrUnimplemented, codes.Unimplemented, "UNIMPLEMENTED"},
	{ErrUnavailable, codes.Unavailable, "UNAVAILABLE"},
	{ErrFenced, codes.Aborted, "JOB_FENCED"},
}

// RemoteError is an error that came back from the runner over gRPC. It
// unwraps to the sentinel it stands for, if any, or to
// context.DeadlineExceeded or context.Canceled when the call ran out of
// time or was cancelled.
type RemoteError struct {
	Code    codes.Code
	Message string
	kind    error
}

func (e *RemoteError) Error() string { return e.Message }

// Unwrap returns the sentinel the error stands for, or nil.
func (e *RemoteError) Unwrap() error { return e.kind }

// toStatus turns an error of a Runner into a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			st := status.New(s.code, err.Error())
			if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: s.reason, Domain: errorDomain}); derr == nil {
				st = d
			}
			return st.Err()
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

// fromStatus turns a gRPC error back into a RemoteError.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	re := &RemoteError{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != errorDomain {
			continue
		}
		for _, s := range sentinels {
			if s.reason == info.GetReason() {
				re.kind = s.err
			}
		}
	}
	if re.kind == nil {
		switch st.Code() {
		case codes.DeadlineExceeded:
			re.kind = context.DeadlineExceeded
		case codes.Canceled:
			re.kind = context.Canceled
		case codes.Unavailable:
			re.kind = ErrUnavailable
		case codes.Unimplemented:
			re.kind = ErrUnimplemented
		}
	}
	return re
}
