// Package job is the job file: the schema of one migration, its strict
// decoding, its defaults and its validation.
//
// Parse starts from Default, decodes YAML or JSON strictly (an unknown
// key, a repeated key or a value of the wrong type is an error), expands
// environment variables in paths and URLs only, and then Validate reports
// every bad field at once, each by its name in the file
// ("memory.limit: must be at least 32MiB"). The HTTP API decodes its
// request bodies with ParseJSON, so the file and the API share one schema.
package job
