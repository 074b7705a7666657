-- The failure log of each job, shared by the nodes, so that a job resumed
-- on another node keeps the failures recorded before it moved.

CREATE TABLE failed_items (
	job_id text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	-- 1-based position in the job's log.
	n      bigint NOT NULL CHECK (n > 0),
	-- The lease epoch of the writer.
	epoch  bigint NOT NULL,
	record json NOT NULL,
	PRIMARY KEY (job_id, n)
);

-- How many failures the log held when the checkpoint was committed: a
-- resume drops the ones recorded after it, because their items are redone.
ALTER TABLE checkpoints ADD COLUMN failed bigint NOT NULL DEFAULT 0;
