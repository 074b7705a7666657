package runner

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/connector/jsonl"
	"github.com/memvisor/memvisor/pkg/connector/synthetic"
	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/podio"
)

// openSource opens a job's source by its type.
func openSource(ctx context.Context, spec job.Spec, log zerolog.Logger) (connector.Source, error) {
	e := spec.Source
	switch e.Type {
	case job.TypeJSONL:
		return jsonl.OpenSource(e.Path)
	case job.TypeSynthetic:
		return synthetic.New(synthetic.Options{
			Count: e.Count, Seed: e.Seed, PayloadBytes: e.PayloadBytes,
			DuplicateRate: e.DuplicateRate, EmptyKeyRate: e.EmptyKeyRate,
		}), nil
	case job.TypePodio:
		s, err := podio.OpenJobSource(ctx, spec, log)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	return nil, fmt.Errorf("open source: type %q is not supported by this build", e.Type)
}

// openTarget opens a job's target by its type.
func openTarget(ctx context.Context, spec job.Spec, log zerolog.Logger) (connector.Target, error) {
	e := spec.Target
	switch e.Type {
	case job.TypeJSONL:
		return jsonl.OpenTarget(e.Path, log)
	case job.TypePodio:
		t, err := podio.OpenJobTarget(ctx, spec, log)
		if err != nil {
			return nil, err
		}
		return t, nil
	}
	return nil, fmt.Errorf("open target: type %q is not supported by this build", e.Type)
}
