package podio

import (
	"context"
	"fmt"
	"os"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/job"
)

// NewJobClient returns a client for a podio endpoint of a job file, with
// its secrets read from the environment and its credentials file.
func NewJobClient(p *job.Podio, log zerolog.Logger) (*Client, error) {
	creds, err := LoadCredentials(p, os.Getenv)
	if err != nil {
		return nil, err
	}
	return NewClient(Options{
		BaseURL: p.APIURL, Credentials: creds, Timeout: p.Timeout.D(),
		MaxAttempts: p.MaxAttempts, RateWindow: p.RateWindow.D(), QuotaShare: p.QuotaShare,
		BackoffInitial: p.Backoff.D(), Logger: log,
	}), nil
}

// OpenJobSource opens the podio source of a job.
func OpenJobSource(ctx context.Context, spec job.Spec, log zerolog.Logger) (*Source, error) {
	p := spec.Source.Podio
	if p == nil {
		return nil, fmt.Errorf("open podio source: %w: no podio keys", ErrCredentials)
	}
	c, err := NewJobClient(p, log.With().Str("podio", "source").Logger())
	if err != nil {
		return nil, fmt.Errorf("open podio source: %w", err)
	}
	return NewSource(SourceOptions{Client: c, AppID: p.AppID, PageSize: p.PageSize, Filters: p.Filters,
		// A dry run compares field values only: files and comments are
		// not carried, so they do not show as differences.
		Files: spec.PodioCopiesFiles() && !spec.DryRun, Comments: spec.PodioCopiesComments() && !spec.DryRun,
		FieldIDs: fieldIDNames(spec), Logger: log}), nil
}

// fieldIDNames lists the source field names of the job that are Podio
// field ids (digits): field_mapping keys and the match field.
func fieldIDNames(spec job.Spec) []string {
	var out []string
	for k := range spec.FieldMapping {
		if digits(k) {
			out = append(out, k)
		}
	}
	if digits(spec.Match.SourceField) {
		out = append(out, spec.Match.SourceField)
	}
	return out
}

// OpenJobTarget opens the podio target of a job, and checks the job's
// field_mapping and match field against the target app. When the source
// is a Podio app too, its labels are read for the match by label.
func OpenJobTarget(ctx context.Context, spec job.Spec, log zerolog.Logger) (*Target, error) {
	p := spec.Target.Podio
	if p == nil {
		return nil, fmt.Errorf("open podio target: %w: no podio keys", ErrCredentials)
	}
	c, err := NewJobClient(p, log.With().Str("podio", "target").Logger())
	if err != nil {
		return nil, fmt.Errorf("open podio target: %w", err)
	}
	var labels map[string]string
	var srcClient *Client
	if spec.Source.Type == job.TypePodio && spec.Source.Podio != nil {
		src, err := OpenJobSource(ctx, spec, log)
		if err == nil {
			labels, err = src.Labels(ctx)
			if spec.PodioCopiesFiles() || spec.PodioCopiesComments() {
				// Kept: files are downloaded and comments read with the
				// source's own credentials and quota.
				srcClient = src.c
			} else {
				src.Close()
			}
		}
		if err != nil {
			log.Warn().Err(err).Msg("read the source app's labels; fields are matched by external_id and the target's labels only")
		}
	}
	match := spec.Match.TargetField
	if match == "" && spec.Match.SourceField != "" {
		match = spec.TargetField(spec.Match.SourceField)
	}
	w := WriteOptions{Silent: true, Hook: false}
	if p.Silent != nil {
		w.Silent = *p.Silent
	}
	if p.Hook != nil {
		w.Hook = *p.Hook
	}
	t, err := OpenTarget(ctx, TargetOptions{
		Client: c, AppID: p.AppID, Write: w, PageSize: p.PageSize, SourceLabels: labels,
		FieldMapping: spec.FieldMapping, MatchField: match,
		NeedFinder: spec.Memory.CacheMaxEntries > 0, SourceClient: srcClient,
		Files: spec.PodioCopiesFiles() && srcClient != nil, Comments: spec.PodioCopiesComments() && srcClient != nil,
		FilesConcurrency: p.FilesConcurrency, ExternalIDFormat: p.ExternalIDFormat, Logger: log,
	})
	if err != nil {
		c.Close()
		if srcClient != nil {
			srcClient.Close()
		}
		return nil, err
	}
	return t, nil
}
