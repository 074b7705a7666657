package batcher

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/memvisor/memvisor/pkg/checkpoint"
)

// Remote is where a fleet job records every commit (see docs/design.md,
// "Growing past one host"): the failure records written since the last
// commit, then the checkpoint, once its target writes are durable. It
// refuses both once the job's lease is lost, and the job stops at its
// next commit.
type Remote interface {
	// AppendFailures records failure-log lines after the first after
	// records, dropping any beyond after first.
	AppendFailures(ctx context.Context, after int64, lines [][]byte) error
	// Commit records cp and cuts the failure records to
	// cp.FailedRecords.
	Commit(ctx context.Context, cp checkpoint.Checkpoint) error
}

// ErrFenced wraps what Options.Fence returned: the job stopped because it
// may no longer write.
var ErrFenced = errors.New("stopped writing: the job may no longer write to the target")

// checkFence asks Options.Fence whether the job may still write. The first
// refusal stops the job as a drain does: no write is issued after it.
func (b *Batcher) checkFence() error {
	if b.o.Fence == nil {
		return nil
	}
	err := b.o.Fence()
	if err == nil {
		return nil
	}
	err = fmt.Errorf("%w: %w", ErrFenced, err)
	if b.fenced.CompareAndSwap(nil, &err) {
		b.log.Error().Err(err).Msg("fenced: no further write or commit")
	}
	b.setStop(StatusDrained)
	return *b.fenced.Load()
}

// remoteChunk bounds the lines sent in one AppendFailures call, well under
// a gRPC message's 4 MiB.
const remoteChunk = 1 << 20

// commitRemote records cp in the Remote, with the lines of the failure log
// at path from byte from to cp.FailedBytes, which follow record number
// after. It returns nil without a Remote.
func (b *Batcher) commitRemote(ctx context.Context, cp checkpoint.Checkpoint, path string, from, after int64) error {
	if b.o.Remote == nil {
		return nil
	}
	if err := b.checkFence(); err != nil {
		return err
	}
	if cp.FailedBytes > from {
		if err := b.pushFailures(ctx, path, from, cp.FailedBytes, after); err != nil {
			return err
		}
	}
	if err := b.o.Remote.Commit(ctx, cp); err != nil {
		return fmt.Errorf("commit checkpoint %d to the fleet: %w", cp.Seq, err)
	}
	return nil
}

// pushFailures sends the lines of path between byte offsets from and to
// (both at line starts) in chunks, numbered after record after.
func (b *Batcher) pushFailures(ctx context.Context, path string, from, to, after int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read failures to record in the fleet: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(io.NewSectionReader(f, from, to-from), 64<<10)
	var chunk [][]byte
	size := 0
	send := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if err := b.o.Remote.AppendFailures(ctx, after, chunk); err != nil {
			return fmt.Errorf("record %d failures in the fleet: %w", len(chunk), err)
		}
		after += int64(len(chunk))
		chunk, size = chunk[:0], 0
		return nil
	}
	for {
		line, err := r.ReadBytes('\n')
		if line = bytes.TrimRight(line, "\n"); len(line) > 0 {
			if size+len(line) > remoteChunk {
				if err := send(); err != nil {
					return err
				}
			}
			chunk = append(chunk, line)
			size += len(line)
		}
		if errors.Is(err, io.EOF) {
			return send()
		}
		if err != nil {
			return fmt.Errorf("read failures to record in the fleet: %w", err)
		}
	}
}

// countLines counts the lines in the first size bytes of path, for a
// checkpoint written before FailedRecords existed.
func countLines(path string, size int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("count failure records: %w", err)
	}
	defer f.Close()
	var n int64
	buf := make([]byte, 64<<10)
	r := io.NewSectionReader(f, 0, size)
	for {
		k, err := r.Read(buf)
		n += int64(bytes.Count(buf[:k], []byte{'\n'}))
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("count failure records: %w", err)
		}
	}
}

// RemoveSnapshots removes every cache snapshot in the state directory dir:
// a checkpoint taken from a fleet's database names none this node has,
// and the next runner rebuilds the cache from the target instead.
func RemoveSnapshots(dir string) error {
	names, err := filepath.Glob(filepath.Join(dir, "cache-*.snap"))
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if err := os.Remove(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
