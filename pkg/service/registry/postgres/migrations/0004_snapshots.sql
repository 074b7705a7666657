-- A job's last cache snapshot, so that a job that moves to another node
-- restores its match cache instead of reading the whole target again (for
-- a Podio target of millions of items, hours of quota).

CREATE TABLE snapshots (
	job_id     text PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
	-- The lease epoch of the write.
	epoch      bigint NOT NULL,
	-- checkpoint.Snapshot: the file name, the target mark it reflects and
	-- its entries.
	meta       json NOT NULL,
	written_at timestamptz NOT NULL DEFAULT now()
);

-- The snapshot's files, in pieces: part 0 is the match index, part 1 the
-- external ids of target items without a match value.
CREATE TABLE snapshot_chunks (
	job_id text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
	part   smallint NOT NULL CHECK (part IN (0, 1)),
	n      integer NOT NULL CHECK (n >= 0),
	data   bytea NOT NULL,
	PRIMARY KEY (job_id, part, n)
);
