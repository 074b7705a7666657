package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Mode says what the runner does with each source item.
type Mode string

// The modes, as in the original tool.
const (
	// ModeCreate creates every source item whose match value is not in the
	// target yet. An item whose match value is already there is handled
	// according to OnDuplicate.
	ModeCreate Mode = "create"
	// ModeUpdate updates the target item with the same match value and skips
	// a source item that has none.
	ModeUpdate Mode = "update"
	// ModeUpsert updates the target item with the same match value and
	// creates one when there is none.
	ModeUpsert Mode = "upsert"
)

// OnDuplicate says what create mode does with a source item whose match
// value already exists in the target.
type OnDuplicate string

// The duplicate policies.
const (
	DuplicateSkip   OnDuplicate = "skip"
	DuplicateUpdate OnDuplicate = "update"
	// DuplicateError fails that one item (it goes to failed.jsonl with the
	// category "duplicate") and never aborts the job.
	DuplicateError OnDuplicate = "error"
)

// DefaultSnapshotInterval is snapshot_interval's default.
const DefaultSnapshotInterval = 10 * time.Minute

// Spec is a job file: one migration from a source to a target. The same
// schema is the body of POST /v1/jobs.
type Spec struct {
	ID           string            `json:"id"`
	StateDir     string            `json:"state_dir"`
	Source       Endpoint          `json:"source"`
	Target       Endpoint          `json:"target"`
	Match        Match             `json:"match"`
	Mode         Mode              `json:"mode"`
	OnDuplicate  OnDuplicate       `json:"on_duplicate"`
	BatchSize    int               `json:"batch_size"`
	Concurrency  int               `json:"concurrency"`
	MaxItems     int64             `json:"max_items"`
	DryRun       bool              `json:"dry_run"`
	FieldMapping map[string]string `json:"field_mapping,omitempty"`
	// SnapshotInterval is how often, at the latest, a commit also saves
	// the match cache, so that a runner that was killed restores it and
	// reads only the target's writes after it, instead of the whole
	// target. 0: only drains save it.
	SnapshotInterval Duration `json:"snapshot_interval"`
	Memory           Memory   `json:"memory"`
	Log              Log      `json:"log"`
	Inject           Inject   `json:"inject"`
}

// Match names the field that identifies the same item on both sides.
// An empty SourceField turns duplicate detection by value off: every
// item is then deduplicated by its external_id alone.
type Match struct {
	SourceField string `json:"source_field"`
	TargetField string `json:"target_field"`
}

// Endpoint is a source or a target. Which keys apply depends on Type;
// Validate rejects keys that do not belong to the type.
type Endpoint struct {
	Type string `json:"type"`

	// jsonl
	Path string `json:"path,omitempty"`

	// synthetic (source only)
	Count         int64   `json:"count,omitempty"`
	Seed          int64   `json:"seed,omitempty"`
	PayloadBytes  int     `json:"payload_bytes,omitempty"`
	DuplicateRate float64 `json:"duplicate_rate,omitempty"`
	EmptyKeyRate  float64 `json:"empty_key_rate,omitempty"`

	// podio; see podio.go.
	*Podio
}

// The endpoint types.
const (
	TypeJSONL     = "jsonl"
	TypeSynthetic = "synthetic"
	TypePodio     = "podio"
)

// Log holds the job's logging options.
type Log struct {
	// MaskValues replaces match values in log lines and failure records
	// with a short hash, as the original tool's PII masking did.
	MaskValues bool `json:"mask_values"`
}

// Inject holds the fault injections used by the examples and tests. A
// one-off fault fires once per job; the state dir records that it fired.
type Inject struct {
	// LeakBytesPerItem is retained for the life of the runner process, so
	// GC cannot free it. It applies in every runner of the job.
	LeakBytesPerItem ByteSize `json:"leak_bytes_per_item,omitempty"`
	// SpikeBytes of garbage are allocated once, at item SpikeAtItem, and
	// dropped at once, so GC can free them.
	SpikeBytes  ByteSize `json:"spike_bytes,omitempty"`
	SpikeAtItem int64    `json:"spike_at_item,omitempty"`
	// CrashAtItem panics the runner once when it reaches that item.
	CrashAtItem int64 `json:"crash_at_item,omitempty"`
	// CrashOnStart panics every runner of the job as it starts: a crash loop.
	CrashOnStart bool `json:"crash_on_start,omitempty"`
	// HangAtItem blocks every goroutine of the job once at that item, so
	// RPCs time out.
	HangAtItem int64 `json:"hang_at_item,omitempty"`
	// SlowDrain delays a drain by this much.
	SlowDrain Duration `json:"slow_drain,omitempty"`
	// SlowBatch sleeps this long after every batch, to make a job last.
	SlowBatch Duration `json:"slow_batch,omitempty"`
	// LeakBytesPerSecond is retained like LeakBytesPerItem, but at a
	// steady rate over time, whatever the items: a leak in a background
	// task. It applies in every runner of the job.
	LeakBytesPerSecond ByteSize `json:"leak_bytes_per_second,omitempty"`
	// SlowWrite makes every target write wait this long first, as a
	// rate-limited API does, and lets writes run concurrently up to the
	// job's concurrency.
	SlowWrite Duration `json:"slow_write,omitempty"`
}

// Any reports whether any fault is configured.
func (i Inject) Any() bool { return i != Inject{} }

// Default returns a spec with every default filled in. Parse starts from it.
func Default() Spec {
	return Spec{
		StateDir:    "./state",
		Mode:        ModeCreate,
		OnDuplicate: DuplicateSkip,
		BatchSize:   500,
		Concurrency: 5,
		// A snapshot of 10 million entries takes about a second to
		// write: a thousandth of the time between two.
		SnapshotInterval: Duration(DefaultSnapshotInterval),
		Memory:           DefaultMemory(),
	}
}

// Parse reads a job file (YAML or JSON) strictly: an unknown key, a key
// given twice or a value of the wrong type is an error. It expands
// environment variables in paths and URLs, fills defaults, and validates.
func Parse(r io.Reader) (Spec, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxSpecBytes+1))
	if err != nil {
		return Spec{}, fmt.Errorf("read job file: %w", err)
	}
	if len(data) > maxSpecBytes {
		return Spec{}, fmt.Errorf("read job file: larger than %d bytes", maxSpecBytes)
	}
	s := Default()
	if err := yaml.UnmarshalStrict(data, &s, disallowUnknown); err != nil {
		if js, jerr := yaml.YAMLToJSON(data); jerr == nil {
			if field := locateUnitError(js); field != "" {
				return Spec{}, fmt.Errorf("decode job file: %s: %w", field, cleanDecodeError(err))
			}
		}
		return Spec{}, fmt.Errorf("decode job file: %w", cleanDecodeError(err))
	}
	s.ExpandEnv(os.Getenv)
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// ParseJSON decodes a JSON job spec strictly, as the HTTP API receives it.
func ParseJSON(data []byte) (Spec, error) {
	s := Default()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		if field := locateUnitError(data); field != "" {
			return Spec{}, fmt.Errorf("decode job: %s: %w", field, cleanDecodeError(err))
		}
		return Spec{}, fmt.Errorf("decode job: %w", cleanDecodeError(err))
	}
	if dec.More() {
		return Spec{}, errors.New("decode job: trailing data after the JSON object")
	}
	s.ExpandEnv(os.Getenv)
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// Load parses the job file at path. Relative paths inside the file are
// resolved against the file's directory, so a job file can be run from
// anywhere.
func Load(path string) (Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return Spec{}, fmt.Errorf("open job file: %w", err)
	}
	defer f.Close()
	s, err := Parse(f)
	if err != nil {
		return Spec{}, fmt.Errorf("%s: %w", path, err)
	}
	s.ResolvePaths(filepath.Dir(path))
	return s, nil
}

const maxSpecBytes = 1 << 20

func disallowUnknown(d *json.Decoder) *json.Decoder {
	d.DisallowUnknownFields()
	return d
}

// unitFields are the fields whose values are sizes or durations. Their
// decoders cannot know their own names, so a bad value is located here.
var unitFields = []struct {
	path []string
	kind any
}{
	{[]string{"memory", "limit"}, new(ByteSize)},
	{[]string{"inject", "leak_bytes_per_item"}, new(ByteSize)},
	{[]string{"inject", "spike_bytes"}, new(ByteSize)},
	{[]string{"memory", "sample_interval"}, new(Duration)},
	{[]string{"memory", "gc_cooldown"}, new(Duration)},
	{[]string{"memory", "rpc_timeout"}, new(Duration)},
	{[]string{"memory", "drain_timeout"}, new(Duration)},
	{[]string{"memory", "restart_budget", "window"}, new(Duration)},
	{[]string{"inject", "slow_drain"}, new(Duration)},
	{[]string{"inject", "slow_batch"}, new(Duration)},
	{[]string{"inject", "leak_bytes_per_second"}, new(ByteSize)},
	{[]string{"inject", "slow_write"}, new(Duration)},
}

// locateUnitError returns the name of the first size or duration field in
// the JSON document that does not decode, or "".
func locateUnitError(doc []byte) string {
	var root map[string]any
	if json.Unmarshal(doc, &root) != nil {
		return ""
	}
	for _, f := range unitFields {
		var v any = root
		for _, k := range f.path {
			m, ok := v.(map[string]any)
			if !ok {
				v = nil
				break
			}
			v = m[k]
		}
		if v == nil {
			continue
		}
		raw, _ := json.Marshal(v)
		if json.Unmarshal(raw, f.kind) != nil {
			return strings.Join(f.path, ".")
		}
	}
	return ""
}

// cleanDecodeError turns the decoder's messages into ones that name the
// field the way the job file spells it.
func cleanDecodeError(err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "error unmarshaling JSON: while decoding JSON: ")
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.Replace(msg, "json: unknown field", "unknown field", 1)
	msg = strings.Replace(msg, "json: cannot unmarshal", "cannot decode", 1)
	msg = strings.Replace(msg, " of type job.", " of type ", 1)
	return errors.New(msg)
}

// ExpandEnv expands $VAR and ${VAR} in the fields that hold paths and
// URLs. Other fields are taken literally.
func (s *Spec) ExpandEnv(getenv func(string) string) {
	x := func(v string) string { return os.Expand(v, getenv) }
	s.StateDir = x(s.StateDir)
	for _, e := range []*Endpoint{&s.Source, &s.Target} {
		e.Path = x(e.Path)
		if e.Podio != nil {
			e.Podio.expandEnv(x)
		}
	}
}

// ResolvePaths makes relative paths absolute against dir.
func (s *Spec) ResolvePaths(dir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	s.StateDir = abs(s.StateDir)
	s.Source.Path = abs(s.Source.Path)
	s.Target.Path = abs(s.Target.Path)
	for _, e := range []*Endpoint{&s.Source, &s.Target} {
		if e.Podio != nil {
			e.Podio.resolvePaths(abs)
		}
	}
}

// Dir is the job's own state directory, <state_dir>/<id>.
func (s Spec) Dir() string { return filepath.Join(s.StateDir, s.ID) }

// EffectiveMapping returns the target field for a source field.
func (s Spec) TargetField(sourceField string) string {
	if t, ok := s.FieldMapping[sourceField]; ok {
		return t
	}
	return sourceField
}

// ValidName reports whether s is 1 to maxLen letters, digits, '.', '_'
// or '-', starting with a letter or digit: a job ID, or a fleet node ID,
// safe as a file name and in a URL path. It is a loop, not a regexp: a
// bounded repetition such as {0,127} compiles to a program of that many
// states, which every process linking this package (the supervisor's
// run included) would build at start-up and keep (121 kB in 1,745
// allocations for the job ID alone).
func ValidName(s string, maxLen int) bool {
	if len(s) == 0 || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Validate checks every field and reports every problem at once, each by
// the name the job file gives it.
func (s Spec) Validate() error {
	var v Errors
	if !ValidName(s.ID, 128) {
		v.Add("id", "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit (got %q)", s.ID)
	}
	if s.StateDir == "" {
		v.Add("state_dir", "must not be empty")
	}
	validateEndpoint(&v, "source", s.Source, true)
	validateEndpoint(&v, "target", s.Target, false)
	if s.Source.Type == TypeSynthetic && s.Match.SourceField != "" && s.Match.SourceField != SyntheticMatchField {
		v.Add("match.source_field", "the synthetic source has the match field %q (got %q)", SyntheticMatchField, s.Match.SourceField)
	}
	if s.Match.SourceField == "" && s.Match.TargetField != "" {
		v.Add("match.source_field", "must be set when match.target_field is")
	}
	switch s.Mode {
	case ModeCreate, ModeUpdate, ModeUpsert:
	default:
		v.Add("mode", "must be one of create, update, upsert (got %q)", s.Mode)
	}
	if (s.Mode == ModeUpdate || s.Mode == ModeUpsert) && s.Match.SourceField == "" {
		v.Add("match.source_field", "is required in %s mode", s.Mode)
	}
	switch s.OnDuplicate {
	case DuplicateSkip, DuplicateUpdate, DuplicateError:
	default:
		v.Add("on_duplicate", "must be one of skip, update, error (got %q)", s.OnDuplicate)
	}
	if s.BatchSize < 1 || s.BatchSize > 10000 {
		v.Add("batch_size", "must be between 1 and 10000 (got %d)", s.BatchSize)
	}
	if s.Concurrency < 1 || s.Concurrency > 64 {
		v.Add("concurrency", "must be between 1 and 64 (got %d)", s.Concurrency)
	}
	if d := s.SnapshotInterval; d < 0 || (d > 0 && d < Duration(time.Second)) {
		v.Add("snapshot_interval", "must be 0 (a snapshot only at a drain) or at least 1s (got %s)", d)
	}
	if s.MaxItems < 0 {
		v.Add("max_items", "must be 0 (all) or more (got %d)", s.MaxItems)
	}
	for from, to := range s.FieldMapping {
		if from == "" || to == "" {
			v.Add("field_mapping", "source and target field names must not be empty (%q: %q)", from, to)
		}
	}
	s.validatePodioTransfer(&v)
	s.Memory.validate(&v, "memory")
	s.Inject.validate(&v)
	return v.Err()
}

// SyntheticMatchField is the field of the synthetic source that carries
// its match value.
const SyntheticMatchField = "email"

func validateEndpoint(v *Errors, name string, e Endpoint, isSource bool) {
	synthOnly := e.Count != 0 || e.Seed != 0 || e.PayloadBytes != 0 || e.DuplicateRate != 0 || e.EmptyKeyRate != 0
	switch e.Type {
	case TypeJSONL:
		if e.Path == "" {
			v.Add(name+".path", "is required for a jsonl %s", name)
		}
		if synthOnly {
			v.Add(name, "count, seed, payload_bytes, duplicate_rate and empty_key_rate apply only to a synthetic source")
		}
		if e.Podio != nil {
			v.Add(name, "podio keys (app_id, api_url, auth, ...) apply only to type podio")
		}
	case TypeSynthetic:
		if !isSource {
			v.Add(name+".type", "synthetic is a source only")
			return
		}
		if e.Path != "" {
			v.Add(name+".path", "does not apply to a synthetic source")
		}
		if e.Count < 1 {
			v.Add(name+".count", "must be at least 1 (got %d)", e.Count)
		}
		if e.PayloadBytes < 0 || e.PayloadBytes > 1<<20 {
			v.Add(name+".payload_bytes", "must be between 0 and 1048576 (got %d)", e.PayloadBytes)
		}
		if e.DuplicateRate < 0 || e.DuplicateRate > 1 {
			v.Add(name+".duplicate_rate", "must be between 0 and 1 (got %g)", e.DuplicateRate)
		}
		if e.EmptyKeyRate < 0 || e.EmptyKeyRate > 1 {
			v.Add(name+".empty_key_rate", "must be between 0 and 1 (got %g)", e.EmptyKeyRate)
		}
		if e.Podio != nil {
			v.Add(name, "podio keys (app_id, api_url, auth, ...) apply only to type podio")
		}
	case TypePodio:
		if e.Path != "" || synthOnly {
			v.Add(name, "path and synthetic keys do not apply to a podio %s", name)
		}
		if e.Podio == nil {
			v.Add(name+".app_id", "is required for a podio %s", name)
			return
		}
		e.Podio.validate(v, name, isSource)
	case "":
		v.Add(name+".type", "is required: one of jsonl, synthetic, podio")
	default:
		v.Add(name+".type", "must be one of jsonl, synthetic, podio (got %q)", e.Type)
	}
}

func (i Inject) validate(v *Errors) {
	if i.LeakBytesPerItem < 0 {
		v.Add("inject.leak_bytes_per_item", "must not be negative")
	}
	if i.SpikeBytes < 0 {
		v.Add("inject.spike_bytes", "must not be negative")
	}
	if (i.SpikeBytes > 0) != (i.SpikeAtItem > 0) {
		v.Add("inject.spike_at_item", "spike_bytes and spike_at_item go together")
	}
	if i.CrashAtItem < 0 {
		v.Add("inject.crash_at_item", "must not be negative")
	}
	if i.HangAtItem < 0 {
		v.Add("inject.hang_at_item", "must not be negative")
	}
	if i.SlowDrain < 0 || i.SlowBatch < 0 {
		v.Add("inject", "slow_drain and slow_batch must not be negative")
	}
	if i.LeakBytesPerSecond < 0 {
		v.Add("inject.leak_bytes_per_second", "must not be negative")
	}
	if i.SlowWrite < 0 {
		v.Add("inject.slow_write", "must not be negative")
	}
}

// ParseAPI decodes a job spec that came over the network, onto base (the
// service's defaults), as DecodeStrict does: keys match exactly, each
// problem is a FieldError naming its field. Unlike Parse and ParseJSON it
// expands no environment variable: a '$' in a path or URL is refused, so
// that a request cannot read the service's environment. stateDir replaces
// whatever the body says; the service owns where job state lives.
func ParseAPI(data []byte, base Spec, stateDir string) (Spec, error) {
	if len(data) > maxSpecBytes {
		return Spec{}, Errors{{Field: "", Message: fmt.Sprintf("is larger than %d bytes", maxSpecBytes)}}
	}
	s := base
	if err := DecodeStrict(data, &s); err != nil {
		return Spec{}, err
	}
	s.StateDir = stateDir
	var v Errors
	noEnv := func(field, value string) {
		if strings.Contains(value, "$") {
			v.Add(field, "environment variables are not expanded in API requests: give the value itself")
		}
	}
	for _, e := range []struct {
		name string
		ep   Endpoint
	}{{"source", s.Source}, {"target", s.Target}} {
		noEnv(e.name+".path", e.ep.Path)
		if e.ep.Podio != nil {
			noEnv(e.name+".api_url", e.ep.APIURL)
			if e.ep.Auth != nil {
				noEnv(e.name+".auth.credentials_file", e.ep.Auth.CredentialsFile)
			}
		}
	}
	if err := s.Validate(); err != nil {
		var ve Errors
		if errors.As(err, &ve) {
			v = append(v, ve...)
		} else {
			return Spec{}, err
		}
	}
	return s, v.Err()
}
