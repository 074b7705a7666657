-- A job may use two sets of Podio credentials (its source's and its
-- target's): it holds a quota share of each.

ALTER TABLE jobs ADD COLUMN quota_keys text[] NOT NULL DEFAULT '{}';
UPDATE jobs SET quota_keys = ARRAY[quota_key] WHERE quota_key <> '';
ALTER TABLE jobs DROP COLUMN quota_key;
