package connector

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"
)

// Fields maps a field name to its JSON value. Values stay encoded until a
// step needs them, so an item passes from source to target without being
// decoded twice.
type Fields map[string]json.RawMessage

// Item is one source item on its way to the target.
type Item struct {
	// ID is the item's id in the source. It is stable, and the target
	// stores it as external_id.
	ID int64
	// Fields are the item's values, by source field name.
	Fields Fields
}

// ExternalID is the key the target stores for a source item: the decimal
// source item id.
func ExternalID(sourceID int64) string { return strconv.FormatInt(sourceID, 10) }

// Record is one position of the source: an item, or an entry that could
// not be read (a malformed line), which goes to failed.jsonl.
type Record struct {
	// Pos is where the record starts: Read(ctx, Pos, 1) reads it again.
	Pos  Cursor
	Item Item
	// Err is set when the record could not be decoded. Item.ID is then
	// whatever could be recovered (0 if nothing).
	Err error
	// Raw is the start of an undecodable record, for failed.jsonl.
	Raw []byte
}

// Cursor is a position in a source, stored in checkpoints. Index counts
// records consumed, malformed ones included. Offset is the source's own
// position (a byte offset for a file; unused elsewhere) so that a resume
// seeks instead of rescanning.
type Cursor struct {
	Index  int64 `json:"index"`
	Offset int64 `json:"offset,omitempty"`
	// Line is the number of lines before this position, for
	// line-oriented sources, so that failures can name a line.
	Line int64 `json:"line,omitempty"`
}

// Source streams records in a stable order.
type Source interface {
	// Read returns up to limit records starting at cur, and the cursor
	// after them. It returns no records, and io.EOF, at the end.
	Read(ctx context.Context, cur Cursor, limit int) ([]Record, Cursor, error)
	// Total returns the number of records, or ok=false if it is not known
	// cheaply.
	Total(ctx context.Context) (n int64, ok bool, err error)
	Close() error
}

// TargetItem is an existing item in the target.
type TargetItem struct {
	ID         int64
	ExternalID string
	Fields     Fields
}

// Mark is an opaque position in the target's history: a byte offset for
// a file, the highest item id for an API with increasing ids. Everything
// written after a Mark is returned by Scan(ctx, mark, ...).
type Mark int64

// ItemGetter is implemented by sources that can fetch one item by its id,
// which --retry-failed prefers to re-reading a position.
type ItemGetter interface {
	GetItem(ctx context.Context, id int64) (Item, error)
}

// RateLimited is implemented by connectors behind a rate limit, so that
// the job's status can say "rate limited until T".
type RateLimited interface {
	RateLimitedUntil() time.Time
}

// Target is where items go. Writes must be safe for concurrent use.
type Target interface {
	// Scan calls fn for every item written after since (all items for
	// since 0), in write order, streaming a page at a time. It returns the
	// Mark after the last item seen.
	Scan(ctx context.Context, since Mark, fn func(TargetItem) error) (Mark, error)
	// Create writes a new item with externalID and returns its target id.
	// A create whose outcome is unknown (a lost response) is resolved by
	// the target itself with a lookup by externalID before any retry.
	Create(ctx context.Context, externalID string, f Fields) (int64, error)
	// Update replaces the given fields of an existing item.
	Update(ctx context.Context, id int64, f Fields) error
	// Get returns an existing item's fields, for dry-run diffs. It may
	// return ErrNotFound.
	Get(ctx context.Context, id int64) (Fields, error)
	// LookupExternal finds an item by its external id.
	LookupExternal(ctx context.Context, externalID string) (id int64, found bool, err error)
	// Sync makes every write confirmed so far durable, and returns the
	// Mark after them. The checkpoint is committed only after Sync.
	Sync(ctx context.Context) (Mark, error)
	Close() error
}

// Errors that connectors return, matched with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrClosed   = errors.New("connector closed")
)

// Category classifies a failed item, as failed.jsonl and the API report it.
type Category string

// The failure categories.
const (
	CategoryNetwork    Category = "network"
	CategoryValidation Category = "validation"
	CategoryPermission Category = "permission"
	CategoryRateLimit  Category = "rate_limit"
	CategoryDuplicate  Category = "duplicate"
	CategoryUnknown    Category = "unknown"
)

// ItemError is a failure of one item. Connectors return it for errors
// they can classify; anything else is CategoryUnknown.
type ItemError struct {
	Category  Category
	Retryable bool
	// Detail is the remote service's error body, if any, kept verbatim
	// for failed.jsonl.
	Detail json.RawMessage
	Err    error
}

func (e *ItemError) Error() string { return string(e.Category) + ": " + e.Err.Error() }
func (e *ItemError) Unwrap() error { return e.Err }

// Classify returns the category and retryability of err.
func Classify(err error) (Category, bool) {
	var ie *ItemError
	if errors.As(err, &ie) {
		return ie.Category, ie.Retryable
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return CategoryNetwork, true
	}
	return CategoryUnknown, false
}

// MatchFinder is implemented by targets that can look an item up by the
// value of one field. The batcher uses it when a bounded cache cannot
// prove that a match value is absent.
type MatchFinder interface {
	// FindByMatch returns the id of an item whose field, normalized with
	// slimcache.Normalize, equals key.
	FindByMatch(ctx context.Context, field, key string) (id int64, found bool, err error)
}

// Flusher is implemented by targets whose Sync does two things: hand the
// buffered writes to the OS, then wait for the disk. Flush does the first
// and returns the Mark after the writes, so the runner can prepare the
// checkpoint while Sync waits for the disk.
type Flusher interface {
	Flush(ctx context.Context) (Mark, error)
}

// Sequential is implemented by targets whose writes are serialized anyway
// (a file): the runner then writes from one goroutine, in order, and
// saves the cost of concurrency that cannot help.
type Sequential interface {
	SequentialWrites() bool
}

// KeyScanner is implemented by targets that can stream just what the
// prefetch needs (id, external_id and one field) far more cheaply than
// whole items. It has Scan's semantics otherwise.
type KeyScanner interface {
	ScanKeys(ctx context.Context, since Mark, field string, fn func(id int64, externalID string, value json.RawMessage) error) (Mark, error)
}

// FieldEncoder is implemented by targets that can encode an item's fields
// before the write. The runner encodes the next batch while the current
// one commits, and hands the bytes to the Encoded writes, which then only
// add the item's id.
type FieldEncoder interface {
	EncodeFields(dst []byte, f Fields) []byte
	CreateEncoded(ctx context.Context, externalID string, encoded []byte) (int64, error)
	UpdateEncoded(ctx context.Context, id int64, encoded []byte) error
}
