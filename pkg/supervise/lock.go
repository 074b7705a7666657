package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gofrs/flock"
	"github.com/shirou/gopsutil/v4/process"

	"github.com/memvisor/memvisor/internal/atomicfile"
)

// The files a supervisor keeps in a job's state directory. The runner
// keeps its own lock, job.lock, so these two never meet.
const (
	LockFile = "supervisor.lock"
	PIDFile  = "runner.pid"
)

// ErrJobLocked means another supervisor supervises the job.
var ErrJobLocked = errors.New("job is supervised by another process")

// jobLock is the supervisor's hold on one job: an flock the kernel drops
// when the supervisor dies, and the runner's pidfile.
type jobLock struct {
	dir string
	fl  *flock.Flock
}

func lockJob(dir string) (*jobLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create job directory %s: %w", dir, err)
	}
	fl := flock.New(filepath.Join(dir, LockFile))
	ok, err := fl.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", fl.Path(), err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s is locked; stop the other supervisor first", ErrJobLocked, fl.Path())
	}
	return &jobLock{dir: dir, fl: fl}, nil
}

func (l *jobLock) unlock() error { return l.fl.Unlock() }

// pidRecord is what runner.pid holds: the pid and the process's start
// time, so a pid the kernel has since reused is not mistaken for the
// runner.
type pidRecord struct {
	PID        int
	CreateTime int64 // ms since the epoch, as gopsutil reports it
}

func (l *jobLock) writePID(pid int) error {
	rec := pidRecord{PID: pid}
	if ct, err := (&process.Process{Pid: int32(pid)}).CreateTime(); err == nil {
		rec.CreateTime = ct
	}
	data := fmt.Sprintf("%d %d\n", rec.PID, rec.CreateTime)
	if err := atomicfile.WriteBytes(filepath.Join(l.dir, PIDFile), 0o644, []byte(data)); err != nil {
		return fmt.Errorf("write runner pidfile: %w", err)
	}
	return nil
}

func (l *jobLock) removePID() error {
	err := os.Remove(filepath.Join(l.dir, PIDFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove runner pidfile: %w", err)
	}
	return nil
}

func (l *jobLock) readPID() (pidRecord, bool, error) {
	file := filepath.Join(l.dir, PIDFile)
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return pidRecord{}, false, nil
	}
	if err != nil {
		return pidRecord{}, false, fmt.Errorf("read %s: %w", file, err)
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return pidRecord{}, false, nil
	}
	var rec pidRecord
	if rec.PID, err = strconv.Atoi(f[0]); err != nil || rec.PID <= 0 {
		return pidRecord{}, false, fmt.Errorf("read %s: bad pid %q", file, f[0])
	}
	if len(f) > 1 {
		rec.CreateTime, _ = strconv.ParseInt(f[1], 10, 64)
	}
	return rec, true, nil
}

// reapOrphan kills the runner a previous supervisor of this job left
// behind (it died without stopping it), and waits until it is gone. A
// pid that is dead, reused by another program, or started at another
// time than recorded is left alone. It returns the pid it killed, or 0.
func (l *jobLock) reapOrphan(ctx context.Context, runnerPath string) (int, error) {
	rec, ok, err := l.readPID()
	if err != nil || !ok {
		return 0, err
	}
	if rec.PID == os.Getpid() {
		return 0, nil
	}
	p := &process.Process{Pid: int32(rec.PID)}
	if !alive(p) {
		return 0, l.removePID()
	}
	if !sameExecutable(p, runnerPath) {
		return 0, l.removePID()
	}
	if rec.CreateTime != 0 {
		if ct, err := p.CreateTime(); err == nil && ct != rec.CreateTime {
			return 0, l.removePID()
		}
	}
	if err := syscall.Kill(rec.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return 0, fmt.Errorf("kill orphaned runner %d: %w", rec.PID, err)
	}
	// It is not our child, so it cannot be waited for: poll until it is
	// gone or a zombie (it has released its locks and memory then).
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for alive(p) {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("kill orphaned runner %d: still alive 10s after SIGKILL", rec.PID)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for orphaned runner %d: %w", rec.PID, ctx.Err())
		case <-t.C:
		}
	}
	return rec.PID, l.removePID()
}

// alive reports whether p exists and is not a zombie.
func alive(p *process.Process) bool {
	if err := syscall.Kill(int(p.Pid), 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	st, err := p.Status()
	if err != nil {
		// Gone between the two reads, or /proc is unreadable: trust kill(0).
		return !errors.Is(err, os.ErrNotExist) && !errors.Is(err, process.ErrorProcessNotRunning)
	}
	for _, s := range st {
		if s == process.Zombie {
			return false
		}
	}
	return true
}

// sameExecutable reports whether p runs the runner binary at path. A
// binary replaced on disk since p started still counts.
func sameExecutable(p *process.Process, path string) bool {
	exe, err := p.Exe()
	if err != nil {
		return false
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	return canonical(exe) == canonical(path)
}

func canonical(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		p = a
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p
}
