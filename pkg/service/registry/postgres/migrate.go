package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// ErrSchemaNewer means the database was migrated by a newer memvisor than
// this one: running on it could misread rows, so the node refuses to start.
var ErrSchemaNewer = errors.New("the database schema is newer than this memvisor")

// migrationLock is the advisory lock key that serializes migrations when
// several nodes start at once ("memvisor" in ASCII).
const migrationLock int64 = 0x6d656d7669736f72

// Migration is one versioned schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations in version order. A file is
// named NNNN_name.sql; versions start at 1 and have no gaps.
func Migrations() ([]Migration, error) { return loadMigrations(migrationFiles, "migrations") }

func loadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		v, rest, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 1 || !strings.HasSuffix(name, ".sql") || rest == "" {
			return nil, fmt.Errorf("migration %s: want a name like 0001_name.sql", name)
		}
		data, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: n, Name: name, SQL: string(data)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d (versions start at 1, without gaps or repeats)", m.Name, i+1)
		}
	}
	return out, nil
}

// Migrate brings the schema up to date, each migration in its own
// transaction, and returns the versions it applied. Nodes that start at
// once take turns on an advisory lock, so each migration runs once; running
// Migrate again applies nothing.
func Migrate(ctx context.Context, pool *pgxpool.Pool) ([]int, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	return migrate(ctx, pool, ms)
}

func migrate(ctx context.Context, pool *pgxpool.Pool, ms []Migration) ([]int, error) {
	var applied []int
	for _, m := range ms {
		done, err := applyOne(ctx, pool, m, len(ms))
		if err != nil {
			return applied, err
		}
		if done {
			applied = append(applied, m.Version)
		}
	}
	if len(ms) == 0 {
		if _, err := applyOne(ctx, pool, Migration{}, 0); err != nil {
			return nil, err
		}
	}
	return applied, nil
}

// applyOne applies m unless it is already applied. With a zero m it only
// checks the schema's version against latest.
func applyOne(ctx context.Context, pool *pgxpool.Pool, m Migration, latest int) (bool, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
		return false, fmt.Errorf("migrate: take the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return false, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	var current int
	if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&current); err != nil {
		return false, fmt.Errorf("migrate: read the schema version: %w", err)
	}
	if current > latest {
		return false, fmt.Errorf("migrate: %w: version %d, this memvisor knows up to %d; upgrade this node", ErrSchemaNewer, current, latest)
	}
	if m.Version == 0 {
		return false, tx.Commit(ctx)
	}
	var name string
	err = tx.QueryRow(ctx, "SELECT name FROM schema_migrations WHERE version = $1", m.Version).Scan(&name)
	switch {
	case err == nil:
		if name != m.Name {
			return false, fmt.Errorf("migrate: version %d was applied as %s, but this memvisor has it as %s", m.Version, name, m.Name)
		}
		return false, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return false, fmt.Errorf("migrate: %w", err)
	}
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return false, fmt.Errorf("migrate: apply %s: %w", m.Name, err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
		return false, fmt.Errorf("migrate: record %s: %w", m.Name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("migrate: commit %s: %w", m.Name, err)
	}
	return true, nil
}
