// Package servicetest has a simulated Supervisor for tests of the service
// and its clients: it "processes" a job's items at a set pace, keeps a
// checkpoint in the job's state dir (so a restarted service resumes where
// it stopped), writes failed.jsonl and dry-run.json the way the runner
// does, and emits memory samples with level changes, GC requests and
// restarts, without starting any process.
package servicetest
