package verify

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/connector/jsonl"
	"github.com/memvisor/memvisor/pkg/connector/synthetic"
	"github.com/memvisor/memvisor/pkg/faillog"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/slimcache"
)

// Report is the verdict on one job.
type Report struct {
	Job string `json:"job"`
	// SourceItems counts the source's readable items; Malformed its
	// records that are not items.
	SourceItems int64 `json:"source_items"`
	Malformed   int64 `json:"malformed"`
	// Expected is the number of items a correct target holds.
	Expected int64 `json:"expected"`
	// InTarget is the number of distinct items in the target.
	InTarget int64 `json:"in_target"`
	// Duplicates counts items beyond the first for one match value or
	// one source item.
	Duplicates int64 `json:"duplicates"`
	// Lost counts expected items missing from the target.
	Lost int64 `json:"lost"`
	// Unexpected counts target items that no source item accounts for.
	Unexpected int64 `json:"unexpected"`
	// FailedMissing counts malformed lines absent from failed.jsonl, and
	// FailedRepeated those listed more than once.
	FailedMissing  int64    `json:"failed_missing"`
	FailedRepeated int64    `json:"failed_repeated"`
	Problems       []string `json:"problems,omitempty"`
	OK             bool     `json:"ok"`
}

const maxProblems = 10

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Check verifies a job whose target is a jsonl file that held nothing
// before the job.
func Check(ctx context.Context, spec job.Spec) (Report, error) {
	rep := Report{Job: spec.ID}
	if spec.Target.Type != job.TypeJSONL {
		return rep, fmt.Errorf("verify %s: only a jsonl target can be read directly (got %s)", spec.ID, spec.Target.Type)
	}
	src, err := openSource(spec)
	if err != nil {
		return rep, err
	}
	defer src.Close()

	keys := map[string]int8{}     // match value -> 0 expected, then seen count in target
	emptyIDs := map[string]int8{} // external id of items without a match value
	malformed := map[int64]int8{} // line (or index+1) of malformed records
	cur := connector.Cursor{}
	for n := int64(0); spec.MaxItems == 0 || n < spec.MaxItems; {
		limit := 1000
		if spec.MaxItems > 0 {
			limit = int(min(int64(limit), spec.MaxItems-n))
		}
		recs, next, err := src.Read(ctx, cur, limit)
		if errors.Is(err, io.EOF) && len(recs) == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return rep, fmt.Errorf("read source: %w", err)
		}
		for _, r := range recs {
			n++
			if r.Err != nil {
				rep.Malformed++
				malformed[r.Pos.Line+1] = 0
				continue
			}
			rep.SourceItems++
			key := ""
			if spec.Match.SourceField != "" {
				key, _ = slimcache.NormalizeJSON(r.Item.Fields[spec.Match.SourceField])
			}
			if key == "" {
				emptyIDs[connector.ExternalID(r.Item.ID)] = 0
			} else {
				keys[key] = 0
			}
		}
		cur = next
	}
	rep.Expected = int64(len(keys) + len(emptyIDs))

	if err := readTarget(spec, &rep, keys, emptyIDs); err != nil {
		return rep, err
	}
	for k, n := range keys {
		if n == 0 {
			rep.Lost++
			rep.problem("match value %q is not in the target", k)
		}
	}
	for id, n := range emptyIDs {
		if n == 0 {
			rep.Lost++
			rep.problem("source item %s (no match value) is not in the target", id)
		}
	}
	if spec.Source.Type == job.TypeJSONL && rep.Malformed > 0 {
		if err := checkFailed(spec, &rep, malformed); err != nil {
			return rep, err
		}
	}
	rep.OK = rep.Lost == 0 && rep.Duplicates == 0 && rep.Unexpected == 0 && rep.FailedMissing == 0 && rep.FailedRepeated == 0
	return rep, nil
}

func openSource(spec job.Spec) (connector.Source, error) {
	switch spec.Source.Type {
	case job.TypeJSONL:
		return jsonl.OpenSource(spec.Source.Path)
	case job.TypeSynthetic:
		e := spec.Source
		return synthetic.New(synthetic.Options{Count: e.Count, Seed: e.Seed, PayloadBytes: e.PayloadBytes, DuplicateRate: e.DuplicateRate, EmptyKeyRate: e.EmptyKeyRate}), nil
	}
	return nil, fmt.Errorf("verify %s: cannot read a %s source directly", spec.ID, spec.Source.Type)
}

type targetLine struct {
	ItemID     int64            `json:"item_id"`
	ExternalID string           `json:"external_id"`
	Fields     connector.Fields `json:"fields"`
}

// readTarget reads the whole target: the last line of an item holds its
// fields, its create line its external_id.
func readTarget(spec job.Spec, rep *Report, keys, emptyIDs map[string]int8) error {
	f, err := os.Open(spec.Target.Path)
	if err != nil {
		return fmt.Errorf("open target: %w", err)
	}
	defer f.Close()
	type item struct {
		ext string
		key string
	}
	items := map[int64]item{}
	creates := map[string]int{}
	field := spec.Match.TargetField
	if field == "" && spec.Match.SourceField != "" {
		field = spec.TargetField(spec.Match.SourceField)
	}
	r := bufio.NewReaderSize(f, 1<<20)
	for lineNo := 1; ; lineNo++ {
		line, err := r.ReadBytes('\n')
		if lineNo == 1 && string(line) == jsonl.TargetMarker {
			// A target the service created starts with its marker.
			continue
		}
		if len(line) > 0 {
			if line[len(line)-1] != '\n' {
				rep.problem("target line %d is torn", lineNo)
				rep.Unexpected++
				break
			}
			var l targetLine
			if jerr := json.Unmarshal(line, &l); jerr != nil {
				return fmt.Errorf("target line %d: %w", lineNo, jerr)
			}
			it := items[l.ItemID]
			if l.ExternalID != "" {
				if it.ext != "" && it.ext != l.ExternalID {
					rep.problem("target item %d was created for source items %s and %s", l.ItemID, it.ext, l.ExternalID)
					rep.Duplicates++
				}
				if it.ext == "" {
					creates[l.ExternalID]++
				}
				it.ext = l.ExternalID
			}
			if field != "" {
				it.key, _ = slimcache.NormalizeJSON(l.Fields[field])
			}
			items[l.ItemID] = it
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read target: %w", err)
		}
	}
	rep.InTarget = int64(len(items))
	for ext, n := range creates {
		if n > 1 {
			// Counted below, by match value or external id.
			rep.problem("source item %s was created %d times", ext, n)
		}
	}
	for id, it := range items {
		switch {
		case it.key != "":
			n, ok := keys[it.key]
			if !ok {
				rep.Unexpected++
				rep.problem("target item %d has match value %q, which the source does not have", id, it.key)
				continue
			}
			if n > 0 {
				rep.Duplicates++
				rep.problem("match value %q is in the target more than once (item %d)", it.key, id)
			}
			keys[it.key] = n + 1
		default:
			n, ok := emptyIDs[it.ext]
			if !ok {
				rep.Unexpected++
				rep.problem("target item %d (external_id %q) has no match value and no source item without one accounts for it", id, it.ext)
				continue
			}
			if n > 0 {
				rep.Duplicates++
			}
			emptyIDs[it.ext] = n + 1
		}
	}
	return nil
}

func checkFailed(spec job.Spec, rep *Report, malformed map[int64]int8) error {
	path := filepath.Join(spec.Dir(), "failed.jsonl")
	err := faillog.Each(path, func(e faillog.Entry) error {
		if n, ok := malformed[e.Line]; ok {
			malformed[e.Line] = n + 1
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read failed.jsonl: %w", err)
	}
	for line, n := range malformed {
		switch {
		case n == 0:
			rep.FailedMissing++
			rep.problem("malformed source line %d is not in failed.jsonl", line)
		case n > 1:
			rep.FailedRepeated++
			rep.problem("malformed source line %d is in failed.jsonl %d times", line, n)
		}
	}
	return nil
}
