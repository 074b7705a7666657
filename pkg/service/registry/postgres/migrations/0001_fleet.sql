-- The fleet's shared state: jobs (the registry and the queue), leases
-- (jobs' and Podio quotas'), and checkpoints.

CREATE TABLE jobs (
	id         text PRIMARY KEY,
	-- Creation order, the cursor of List.
	seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
	-- The source and target; at most one active job per pair.
	pair       text NOT NULL DEFAULT '',
	status     text NOT NULL CHECK (status IN ('queued', 'running', 'paused', 'completed', 'failed', 'cancelled')),
	-- A hash of the Podio credentials the job uses, never the credentials.
	quota_key  text NOT NULL DEFAULT '',
	-- The node that last claimed the job.
	node       text NOT NULL DEFAULT '',
	-- The registry record as JSON; json, not jsonb, keeps the spec's bytes.
	record     json NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now()
);

-- Two requests for the same pair cannot both win: the index decides.
CREATE UNIQUE INDEX jobs_active_pair ON jobs (pair)
	WHERE pair <> '' AND status IN ('queued', 'running', 'paused');

CREATE INDEX jobs_claimable ON jobs (seq) WHERE status IN ('queued', 'running');

-- A lease is a row with a fencing epoch. Expiry is on the database's clock,
-- so that nodes' clocks never have to agree. A released lease keeps its row
-- (expired), so that the epoch only ever grows.
CREATE TABLE leases (
	name       text PRIMARY KEY,      -- job/<id> or quota/<key>/<slot>
	node       text NOT NULL,
	holder     text NOT NULL DEFAULT '', -- the job id holding a quota lease
	epoch      bigint NOT NULL CHECK (epoch > 0),
	expires_at timestamptz NOT NULL
);

CREATE TABLE checkpoints (
	job_id     text PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
	-- The lease epoch of the write; a write of a lower epoch is refused.
	epoch      bigint NOT NULL,
	seq        bigint NOT NULL,
	body       json NOT NULL,
	written_at timestamptz NOT NULL DEFAULT now()
);
