-- Asynchronous jobs shared by every replica on one PostgreSQL database (versions from 1001 on, so
-- they never collide with the audit log's migrations when both live in one database). A job is a
-- row: any replica inserts it, any replica's claimer takes it (`FOR UPDATE SKIP LOCKED`), renews
-- its lease while it runs, and writes progress and the outcome back; a lease left to expire (its
-- replica died) lets another replica run the job again, at most `max_attempts` times.
CREATE TABLE explaind_jobs (
    id UUID PRIMARY KEY,
    owner TEXT,
    request_id TEXT,
    model TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    method TEXT NOT NULL,
    state TEXT NOT NULL,
    -- The submitted body (the explain request, input included), exactly as received.
    request BYTEA NOT NULL,
    done BIGINT NOT NULL DEFAULT 0,
    planned BIGINT NOT NULL DEFAULT 0,
    -- The answer as gzip-compressed JSON; `error` the problem+json when it failed.
    result BYTEA,
    error TEXT,
    attempts INT NOT NULL DEFAULT 0,
    max_attempts INT NOT NULL,
    lease_owner TEXT,
    lease_expires TIMESTAMPTZ,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT
);
CREATE INDEX explaind_jobs_waiting ON explaind_jobs (created_ms) WHERE state IN ('queued', 'running');
CREATE INDEX explaind_jobs_owner ON explaind_jobs (owner) WHERE state IN ('queued', 'running');
CREATE INDEX explaind_jobs_finished ON explaind_jobs (finished_ms) WHERE finished_ms IS NOT NULL;
