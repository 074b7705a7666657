package podio

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/slimcache"
)

// TargetOptions configure a Target.
type TargetOptions struct {
	Client *Client
	AppID  int64
	Write  WriteOptions
	// PageSize is the number of items per filter call in Scan; 0 means
	// 500.
	PageSize int
	// SourceLabels maps source field names to labels, for the match by
	// label; nil when the source is not a Podio app.
	SourceLabels map[string]string
	// FieldMapping is the job's field_mapping; each target field it
	// names must exist and be writable.
	FieldMapping map[string]string
	// MatchField is the job's match.target_field, checked to exist.
	MatchField string
	// NeedFinder says the match cache is bounded, so FindByMatch must
	// work for MatchField.
	NeedFinder bool
	// SourceClient reaches the source app, for files and comments; nil
	// when the source is not a Podio app.
	SourceClient *Client
	// Files copies attachments and image fields; Comments copies
	// comments. Both need SourceClient.
	Files    bool
	Comments bool
	// FilesConcurrency bounds the file transfers in flight; 0 means 2.
	FilesConcurrency int
	// ExternalIDFormat is the external_id of a create, {id} standing for
	// the source item id; "" means "{id}".
	ExternalIDFormat string
	Logger           zerolog.Logger
}

// pendingWait bounds the wait of a reference for a create in flight.
const pendingWait = 10 * time.Second

// refCacheMax bounds the cache of source-to-target ids for references.
const refCacheMax = 50_000

// Target writes items into a Podio app.
type Target struct {
	c     *Client
	appID int64
	write WriteOptions
	page  int
	ix    *fieldIndex
	log   zerolog.Logger

	mu     sync.Mutex
	maxID  int64
	refs   map[refKey]int64
	warned map[string]bool
	// pending holds the creates in flight by external id; a reference to
	// one of them waits for it (at most pendingWait).
	pending map[string]chan struct{}
	// unfinished holds items this process created whose comments are not
	// all copied yet, by source id: a retried Create finishes them
	// instead of creating them again.
	unfinished map[string]int64

	srcClient *Client
	// scanFlat keys the match field by its Podio field id in Scan, when
	// the job names it so.
	scanFlat flatOptions
	mover    *mover // nil: files are not copied
	comments bool
	ext      extFormat
}

type refKey struct{ app, src int64 }

var (
	_ connector.Target      = (*Target)(nil)
	_ connector.MatchFinder = (*Target)(nil)
	_ connector.RateLimited = (*Target)(nil)
)

// OpenTarget reads the target app's fields and checks the job's field
// mapping and match field against them.
func OpenTarget(ctx context.Context, o TargetOptions) (*Target, error) {
	def, err := o.Client.GetApp(ctx, o.AppID)
	if err != nil {
		return nil, fmt.Errorf("open podio target: %w", err)
	}
	page := o.PageSize
	if page <= 0 || page > job.PodioMaxPageSize {
		page = job.PodioMaxPageSize
	}
	t := &Target{c: o.Client, appID: o.AppID, write: o.Write, page: page, log: o.Logger,
		ix: newFieldIndex(def, o.SourceLabels), refs: map[refKey]int64{}, warned: map[string]bool{},
		pending: map[string]chan struct{}{}, unfinished: map[string]int64{},
		srcClient: o.SourceClient, ext: newExtFormat(o.ExternalIDFormat)}
	if o.SourceClient != nil {
		if o.Files {
			t.mover = newMover(o.SourceClient, o.Client, o.FilesConcurrency, o.Logger)
		}
		t.comments = o.Comments
	}
	var problems []string
	srcs := make([]string, 0, len(o.FieldMapping))
	for s := range o.FieldMapping {
		srcs = append(srcs, s)
	}
	slices.Sort(srcs)
	for _, src := range srcs {
		name := o.FieldMapping[src]
		f := t.ix.resolve(name)
		switch {
		case f == nil:
			problems = append(problems, fmt.Sprintf("field_mapping: %s -> %s: %v: app %d has no field %q (writable fields: %s)",
				src, name, ErrUnknownField, o.AppID, name, strings.Join(t.ix.writableNames(), ", ")))
		case !writable[f.Type]:
			problems = append(problems, fmt.Sprintf("field_mapping: %s -> %s: %v: it is a %s field",
				src, name, ErrReadOnlyField, f.Type))
		}
	}
	if o.MatchField != "" && digits(o.MatchField) {
		if f := t.ix.resolve(o.MatchField); f != nil {
			t.scanFlat.byID = map[int64]bool{f.FieldID: true}
		}
	}
	if o.MatchField != "" {
		f := t.ix.resolve(o.MatchField)
		switch {
		case f == nil:
			problems = append(problems, fmt.Sprintf("match.target_field: %v: app %d has no field %q", ErrUnknownField, o.AppID, o.MatchField))
		case o.NeedFinder && !filterable(f.Type):
			problems = append(problems, fmt.Sprintf("memory.cache_max_entries: a bounded cache looks match values up in Podio, and %s is a %s field: %v; use a category, number or reference field to match, or an unbounded cache (0)",
				o.MatchField, f.Type, ErrNotFilterable))
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("open podio target app %d: %s", o.AppID, strings.Join(problems, "; "))
	}
	return t, nil
}

// App returns the target app's definition.
func (t *Target) App() *AppDef { return t.ix.app }

func (t *Target) noteID(id int64) {
	t.mu.Lock()
	t.maxID = max(t.maxID, id)
	t.mu.Unlock()
}

func (t *Target) warnOnce(key string, fn func()) {
	t.mu.Lock()
	seen := t.warned[key]
	t.warned[key] = true
	t.mu.Unlock()
	if !seen {
		fn()
	}
}

// Scan streams the items with an item_id above since, in item_id order,
// which is write order. For since 0 it pages through the app sorted by
// item_id ascending. Otherwise it first pages sorted descending until it
// reaches since, to count the newer items, and then reads just those
// ascending from their offset, so memory does not grow with them.
func (t *Target) Scan(ctx context.Context, since connector.Mark, fn func(connector.TargetItem) error) (connector.Mark, error) {
	mark := int64(since)
	start := int64(0)
	if since > 0 {
		var newer, filtered int64
		for off := int64(0); ; {
			ans, err := t.c.Filter(ctx, t.appID, FilterRequest{SortBy: "item_id", SortDesc: true, Limit: t.page, Offset: off})
			if err != nil {
				return since, fmt.Errorf("scan podio app %d: %w", t.appID, err)
			}
			filtered = ans.Filtered
			done := len(ans.Items) < t.page
			for _, it := range ans.Items {
				if it.ItemID <= int64(since) {
					done = true
					break
				}
				newer++
			}
			if done {
				break
			}
			off += int64(len(ans.Items))
		}
		if newer == 0 {
			t.noteID(mark)
			return since, nil
		}
		// A little slack in case the app changed between the passes;
		// items at or below since are skipped.
		start = max(0, filtered-newer-int64(t.page)/10)
	}
	for off := start; ; {
		ans, err := t.c.Filter(ctx, t.appID, FilterRequest{SortBy: "item_id", SortDesc: false, Limit: t.page, Offset: off})
		if err != nil {
			return connector.Mark(mark), fmt.Errorf("scan podio app %d: %w", t.appID, err)
		}
		for _, it := range ans.Items {
			if it.ItemID <= int64(since) {
				continue
			}
			ext, err := t.adopt(ctx, it)
			if err != nil {
				return connector.Mark(mark), err
			}
			if err := fn(connector.TargetItem{ID: it.ItemID, ExternalID: ext, Fields: flatten(it.Fields, t.scanFlat)}); err != nil {
				return connector.Mark(mark), err
			}
			mark = max(mark, it.ItemID)
		}
		if len(ans.Items) < t.page {
			break
		}
		off += int64(len(ans.Items))
	}
	t.noteID(mark)
	return connector.Mark(mark), nil
}

// Create writes a new item for source item externalID, with the
// external_id the job's format makes of it. A create whose answer was
// lost (a reset, a timeout, a 5xx) may have been made: before it is sent
// again, the item is looked up by that external_id, and if it is there
// its id is returned. Create fails only when the item is known not to
// exist, or when that could not be found out (ErrOutcomeUnknown).
//
// The source item's files (CarryField) are uploaded first and attached by
// the create itself (file_ids), so they are attached exactly when the
// item is made; an item with comments is created unfinished (its
// external_id ends in pendingSuffix), its comments are copied, and then
// its external_id is set. A kill in between leaves an unfinished item,
// which the next Scan finishes.
func (t *Target) Create(ctx context.Context, externalID string, f connector.Fields) (int64, error) {
	done := make(chan struct{})
	t.mu.Lock()
	t.pending[externalID] = done
	id, unfinished := t.unfinished[externalID]
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.pending, externalID)
		t.mu.Unlock()
		close(done)
	}()
	meta, f, err := takeCarried(f)
	if err != nil {
		return 0, err
	}
	final := t.ext.format(externalID)
	if unfinished && meta != nil {
		return id, t.finish(ctx, id, meta.ItemID, final)
	}
	w, err := t.convert(ctx, externalID, f, nil)
	if err != nil {
		return 0, err
	}
	if meta != nil && t.mover != nil {
		for _, fr := range meta.Files {
			if !t.copyable(fr) {
				continue
			}
			nid, err := t.mover.copy(ctx, fr)
			if err != nil {
				return 0, fmt.Errorf("create podio item for source item %s: %w", externalID, err)
			}
			w.FileIDs = append(w.FileIDs, nid)
		}
	}
	w.ExternalID = final
	withComments := meta != nil && t.comments && meta.Comments > 0
	if withComments {
		w.ExternalID = final + pendingSuffix
	}
	id, err = t.createSure(ctx, externalID, w)
	if err != nil {
		return 0, err
	}
	if withComments {
		t.mu.Lock()
		t.unfinished[externalID] = id
		t.mu.Unlock()
		if err := t.finish(ctx, id, meta.ItemID, final); err != nil {
			return 0, err
		}
	}
	return id, nil
}

// finish copies the comments of an unfinished item and then gives it its
// final external_id.
func (t *Target) finish(ctx context.Context, id, src int64, final string) error {
	if t.srcClient != nil && t.comments {
		if err := t.copyComments(ctx, src, id); err != nil {
			return fmt.Errorf("finish podio item %d (source item %d): %w", id, src, err)
		}
	}
	if err := t.c.UpdateItem(ctx, id, ItemWrite{ExternalID: final}, t.write); err != nil {
		return fmt.Errorf("finish podio item %d (source item %d): %w", id, src, err)
	}
	t.mu.Lock()
	delete(t.unfinished, strconv.FormatInt(src, 10))
	t.mu.Unlock()
	return nil
}

// adopt reads a target item's external_id for the batcher: the id of the
// source item it was made from, in any of the forms extFormat.parse
// recognizes (so that items the original tool created, or an earlier
// run with another format, are not created again). An unfinished item is
// finished first.
func (t *Target) adopt(ctx context.Context, it APIItem) (string, error) {
	if it.ExternalID == nil {
		return "", nil
	}
	src, pending, ok := t.ext.parse(*it.ExternalID)
	if !ok {
		return *it.ExternalID, nil
	}
	if pending {
		n, _ := strconv.ParseInt(src, 10, 64)
		t.log.Info().Int64("item_id", it.ItemID).Str("external_id", *it.ExternalID).
			Msg("finishing an item whose comments were being copied when the last run stopped")
		if err := t.finish(ctx, it.ItemID, n, t.ext.format(src)); err != nil {
			return "", err
		}
	}
	return src, nil
}

// createSure sends a create, and resolves a lost answer by looking the
// item up by the external_id it was sent with.
func (t *Target) createSure(ctx context.Context, externalID string, w ItemWrite) (int64, error) {
	bo := t.c.newBackoff()
	for attempt := 1; ; attempt++ {
		id, err := t.c.createOnce(ctx, t.appID, w, t.write)
		if err == nil {
			t.noteCreated(externalID, id)
			return id, nil
		}
		var ue *uncertainError
		if !errors.As(err, &ue) {
			return 0, fmt.Errorf("create podio item for source item %s: %w", externalID, err)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		// The create may have been made: the lookup must finish, hold or
		// not, or the item would be written again.
		lctx := connector.WithHold(ctx, nil)
		id, found, lerr := t.lookupSure(lctx, w.ExternalID)
		if lerr != nil {
			return 0, &connector.ItemError{Category: connector.CategoryNetwork, Retryable: true,
				Err: fmt.Errorf("create podio item for source item %s: %w: %v; then %v", externalID, ErrOutcomeUnknown, ue.err, lerr)}
		}
		if found {
			t.log.Info().Str("external_id", w.ExternalID).Int64("item_id", id).Err(ue.err).
				Msg("the answer to a create was lost, but the item was made; found it by external_id")
			t.noteCreated(externalID, id)
			return id, nil
		}
		if attempt >= t.c.maxAttempts {
			return 0, fmt.Errorf("create podio item for source item %s after %d attempts: %w", externalID, attempt, ue.err)
		}
		t.log.Debug().Str("external_id", w.ExternalID).Err(ue.err).Msg("create failed and the item is not there; creating it again")
		if err := sleep(ctx, bo.NextBackOff()); err != nil {
			return 0, err
		}
	}
}

// lookupSure asks for an item by external id, trying harder than a plain
// call, because a create's fate depends on it.
func (t *Target) lookupSure(ctx context.Context, ext string) (int64, bool, error) {
	bo := t.c.newBackoff()
	var err error
	for round := 0; round < 3; round++ {
		var it *APIItem
		var found bool
		if it, found, err = t.c.ItemByExternalID(ctx, t.appID, ext); err == nil {
			if !found {
				return 0, false, nil
			}
			return it.ItemID, true, nil
		}
		if cat, retry := connector.Classify(err); !retry || cat == connector.CategoryPermission {
			return 0, false, err
		}
		if err := sleep(ctx, bo.NextBackOff()); err != nil {
			return 0, false, err
		}
	}
	return 0, false, err
}

func (t *Target) noteCreated(ext string, id int64) {
	t.noteID(id)
	if src, err := strconv.ParseInt(ext, 10, 64); err == nil {
		t.rememberRef(refKey{t.appID, src}, id)
	}
}

func (t *Target) rememberRef(k refKey, id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.refs) >= refCacheMax {
		clear(t.refs)
	}
	t.refs[k] = id
}

// Update writes the given fields of an existing item. 200 and 204 are
// both success.
//
// With files on, the source item's files are copied unless the item
// already has a file of the same name and size, and attached with POST
// /file/{id}/attach; with comments on, the comments it lacks are copied.
// A redone update (after a kill) finds what the first one did and does
// not repeat it.
func (t *Target) Update(ctx context.Context, id int64, f connector.Fields) error {
	meta, f, err := takeCarried(f)
	if err != nil {
		return err
	}
	var existing *APIItem
	if t.mover != nil && (meta != nil && len(meta.Files) > 0 || t.hasImage(f)) {
		if existing, err = t.c.GetItem(ctx, id); err != nil {
			return err
		}
	}
	w, err := t.convert(ctx, strconv.FormatInt(id, 10), f, existing)
	if err != nil {
		return err
	}
	if err := t.c.UpdateItem(ctx, id, w, t.write); err != nil {
		return err
	}
	if meta == nil {
		return nil
	}
	if t.mover != nil {
		for _, fr := range meta.Files {
			if !t.copyable(fr) {
				continue
			}
			if existing != nil && slices.ContainsFunc(existing.Files, func(x FileRef) bool { return sameFile(x, fr) }) {
				continue
			}
			nid, err := t.mover.copy(ctx, fr)
			if err != nil {
				return fmt.Errorf("update podio item %d: %w", id, err)
			}
			if err := t.c.AttachFile(ctx, nid, id); err != nil {
				return fmt.Errorf("update podio item %d: %w", id, err)
			}
		}
	}
	if t.comments && meta.Comments > 0 {
		if err := t.copyComments(ctx, meta.ItemID, id); err != nil {
			return fmt.Errorf("update podio item %d: %w", id, err)
		}
	}
	return nil
}

// copyable reports whether a file can be copied, and warns once per
// host of files that cannot: links to files held outside Podio.
func (t *Target) copyable(fr FileRef) bool {
	if fr.copyable() {
		return true
	}
	t.warnOnce("hosted:"+fr.HostedBy, func() {
		t.log.Warn().Str("hosted_by", fr.HostedBy).Str("file", fr.Name).
			Msg("files held outside Podio are links, not content; they are not copied")
	})
	return false
}

// hasImage reports whether f holds a value for an image field of the
// target.
func (t *Target) hasImage(f connector.Fields) bool {
	for name := range f {
		if fd := t.ix.resolve(name); fd != nil && fd.Type == TypeImage {
			return true
		}
	}
	return false
}

// convertImage copies the files of an image field value and returns the
// new file ids; a file the existing item's field already holds (same
// name and size) is kept, not copied again.
func (t *Target) convertImage(ctx context.Context, fd *FieldDef, raw json.RawMessage, existing *APIItem) ([]int64, error) {
	var refs []FileRef
	if err := json.Unmarshal(raw, &refs); err != nil {
		return nil, validationError("field %s: an image value is a list of files [{\"file_id\",\"name\",\"size\"}] (got %s)", fd.ExternalID, short(raw))
	}
	var have []FileRef
	if existing != nil {
		for _, af := range existing.Fields {
			if af.FieldID != fd.FieldID {
				continue
			}
			for _, v := range af.Values {
				var x struct {
					Value FileRef `json:"value"`
				}
				if json.Unmarshal(v, &x) == nil && x.Value.FileID > 0 {
					have = append(have, x.Value)
				}
			}
		}
	}
	ids := make([]int64, 0, len(refs))
	for _, r := range refs {
		if i := slices.IndexFunc(have, func(h FileRef) bool { return sameFile(h, r) }); i >= 0 {
			ids = append(ids, have[i].FileID)
			continue
		}
		id, err := t.mover.copy(ctx, r)
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", fd.ExternalID, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// convert maps flat fields onto the target app's fields and converts
// their values. Fields with no place in the target, and read-only ones,
// are dropped with one warning per field name. A reference to an item
// that was not migrated is dropped with a warning, unless nothing else
// is left to write, which is a validation failure.
func (t *Target) convert(ctx context.Context, key string, f connector.Fields, existing *APIItem) (ItemWrite, error) {
	conv := &conversion{fields: map[string]any{}}
	names := make([]string, 0, len(f))
	for k := range f {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, name := range names {
		fd := t.ix.resolve(name)
		if fd == nil {
			t.warnOnce("unknown:"+name, func() {
				t.log.Warn().Str("field", name).Int64("app_id", t.appID).Msg("the target app has no such field; its values are not written")
			})
			continue
		}
		if fd.Type == TypeImage && t.mover != nil {
			if _, dup := conv.fields[fd.ExternalID]; dup {
				continue
			}
			ids, err := t.convertImage(ctx, fd, f[name], existing)
			if err != nil {
				return ItemWrite{}, err
			}
			conv.fields[fd.ExternalID] = ids
			continue
		}
		if !writable[fd.Type] {
			t.warnOnce("readonly:"+name, func() {
				t.log.Debug().Str("field", name).Str("type", fd.Type).Msg("target field cannot be written; dropped")
			})
			continue
		}
		if _, dup := conv.fields[fd.ExternalID]; dup {
			t.warnOnce("dup:"+name, func() {
				t.log.Warn().Str("field", name).Str("target_field", fd.ExternalID).Msg("two source fields map to one target field; the first one wins")
			})
			continue
		}
		before := len(conv.dropped)
		v, err := unflatten(ctx, fd, f[name], t.resolveRef(fd), conv)
		if err != nil {
			return ItemWrite{}, err
		}
		if ids, ok := v.([]int64); ok && fd.Type == TypeApp && len(ids) == 0 && len(conv.dropped) > before {
			continue // every reference dropped: leave the field alone
		}
		conv.fields[fd.ExternalID] = v
	}
	if len(conv.dropped) > 0 {
		if len(conv.fields) == 0 {
			return ItemWrite{}, validationError("item %s: nothing to write: its references point to items that were not migrated (%s)",
				key, strings.Join(conv.dropped, ", "))
		}
		t.log.Warn().Str("item", key).Strs("dropped", conv.dropped).
			Msg("references to items that were not migrated were dropped")
	}
	return ItemWrite{Fields: conv.fields}, nil
}

// resolveRef finds the target id of a referenced source item by its
// external id, in the apps the target field references (the target app
// itself when it names none). An app the credentials cannot reach counts
// as not having the item.
func (t *Target) resolveRef(fd *FieldDef) refResolver {
	apps := fd.ReferencedApps
	if len(apps) == 0 {
		apps = []int64{t.appID}
	}
	ext := func(src int64) string { return connector.ExternalID(src) }
	// cached waits for a create of src in flight, then reads the cache.
	cached := func(ctx context.Context, app, src int64) (int64, bool) {
		t.mu.Lock()
		ch := t.pending[ext(src)]
		t.mu.Unlock()
		if ch != nil && app == t.appID {
			// Bounded, so that two creates referencing each other
			// cannot wait for ever.
			tm := time.NewTimer(pendingWait)
			select {
			case <-ch:
			case <-tm.C:
			case <-ctx.Done():
			}
			tm.Stop()
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		id, ok := t.refs[refKey{app, src}]
		return id, ok
	}
	var lookup func(ctx context.Context, src int64, again bool) (int64, bool, error)
	lookup = func(ctx context.Context, src int64, again bool) (int64, bool, error) {
		for _, app := range apps {
			k := refKey{app, src}
			if id, ok := cached(ctx, app, src); ok {
				return id, true, nil
			}
			var it *APIItem
			var found bool
			var err error
			if again {
				// The second look is for a create of this batch: only
				// the form this job writes.
				it, found, err = t.c.ItemByExternalID(ctx, app, t.ext.format(ext(src)))
			} else {
				it, found, err = t.lookupAny(ctx, app, ext(src))
			}
			if err != nil {
				if cat, _ := connector.Classify(err); cat == connector.CategoryPermission {
					t.warnOnce(fmt.Sprintf("refperm:%d", app), func() {
						t.log.Warn().Int64("app_id", app).Msg("cannot look up references in this app with the target's credentials")
					})
					continue
				}
				return 0, false, err
			}
			if found {
				t.rememberRef(k, it.ItemID)
				return it.ItemID, true, nil
			}
		}
		if !again {
			// The referenced item may be a create of the same batch that
			// had not reached the API yet: look once more, shortly.
			if err := sleep(ctx, 20*time.Millisecond); err != nil {
				return 0, false, err
			}
			return lookup(ctx, src, true)
		}
		return 0, false, nil
	}
	return func(ctx context.Context, src int64) (int64, bool, error) { return lookup(ctx, src, false) }
}

// Get returns an item's flat fields.
func (t *Target) Get(ctx context.Context, id int64) (connector.Fields, error) {
	it, err := t.c.GetItem(ctx, id)
	if err != nil {
		return nil, err
	}
	return Flatten(it.Fields), nil
}

// LookupExternal finds an item of the target app by external id.
// externalID is the source item id; every form extFormat.candidates
// names is tried.
func (t *Target) LookupExternal(ctx context.Context, externalID string) (int64, bool, error) {
	it, found, err := t.lookupAny(ctx, t.appID, externalID)
	if err != nil || !found {
		return 0, false, err
	}
	t.noteID(it.ItemID)
	return it.ItemID, true, nil
}

// lookupAny finds the item of source item src in app by each external
// id form it may carry, in order.
func (t *Target) lookupAny(ctx context.Context, app int64, src string) (*APIItem, bool, error) {
	for _, ext := range t.ext.candidates(src) {
		it, found, err := t.c.ItemByExternalID(ctx, app, ext)
		if err != nil || found {
			return it, found, err
		}
	}
	return nil, false, nil
}

// Sync has nothing to make durable: a confirmed write is in Podio. It
// returns the highest item id seen or created, the Mark after which Scan
// finds every later create; but while an item this process created is
// unfinished (its comments not all copied, say because copying them
// failed), the Mark stays below it, so that the next run's Scan sees the
// item and finishes it.
func (t *Target) Sync(context.Context) (connector.Mark, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	mark := t.maxID
	for _, id := range t.unfinished {
		mark = min(mark, id-1)
	}
	return connector.Mark(mark), nil
}

// filterable lists the types FindByMatch can look up.
func filterable(typ string) bool {
	switch typ {
	case TypeCategory, TypeQuestion, TypeApp, TypeContact, TypeNumber, TypeMoney, TypeProgress, TypeDuration:
		return true
	}
	return false
}

// FindByMatch finds an item whose field, normalized, equals key, with a
// filter on that field. Only the types Podio can filter on work; for
// others it returns ErrNotFilterable.
func (t *Target) FindByMatch(ctx context.Context, field, key string) (int64, bool, error) {
	fd := t.ix.resolve(field)
	if fd == nil {
		return 0, false, fmt.Errorf("find by %s: %w", field, ErrUnknownField)
	}
	var filter any
	switch fd.Type {
	case TypeCategory, TypeQuestion:
		var ids []int64
		for _, part := range strings.Split(key, ",") {
			if id, ok := optionByText(fd, part); ok {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			return 0, false, nil
		}
		filter = ids
	case TypeApp, TypeContact:
		var ids []int64
		for _, part := range strings.Split(key, ",") {
			n, err := strconv.ParseInt(part, 10, 64)
			if err != nil {
				return 0, false, nil
			}
			ids = append(ids, n)
		}
		filter = ids
	case TypeNumber, TypeMoney, TypeProgress, TypeDuration:
		n, err := strconv.ParseFloat(key, 64)
		if err != nil {
			return 0, false, nil
		}
		filter = map[string]float64{"from": n, "to": n}
	default:
		return 0, false, fmt.Errorf("find by %s: %w (type %s)", field, ErrNotFilterable, fd.Type)
	}
	filters := map[string]any{strconv.FormatInt(fd.FieldID, 10): filter}
	for off := int64(0); ; {
		ans, err := t.c.Filter(ctx, t.appID, FilterRequest{SortBy: "item_id", Limit: t.page, Offset: off, Filters: filters})
		if err != nil {
			return 0, false, err
		}
		for _, it := range ans.Items {
			flat := Flatten(it.Fields)
			if k, ok := slimcache.NormalizeJSON(flat[fd.ExternalID]); ok && k == key {
				return it.ItemID, true, nil
			}
		}
		if len(ans.Items) < t.page {
			return 0, false, nil
		}
		off += int64(len(ans.Items))
	}
}

// RateLimitedUntil reports when the target's rate limit lifts.
func (t *Target) RateLimitedUntil() time.Time { return t.c.gate.Until() }

// Close releases the client's connections.
func (t *Target) Close() error {
	t.c.Close()
	if t.srcClient != nil {
		t.srcClient.Close()
	}
	return nil
}
