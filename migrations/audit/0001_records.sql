-- The audit log: one row per record, in chain order. Portable between SQLite and PostgreSQL (the
-- same file runs on both). `body` is the record as canonical JSON (sorted keys); `hash` is
-- sha256(prev_hash || "\n" || body), so editing, deleting or re-ordering a row breaks the chain.
-- The other columns duplicate body fields for filtering; verification checks they agree.
CREATE TABLE audit_records (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT,
    target TEXT,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_records_model ON audit_records (model, seq);
CREATE INDEX audit_records_method ON audit_records (method, seq);
CREATE INDEX audit_records_time ON audit_records (time_ms, seq);
