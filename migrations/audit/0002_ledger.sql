-- Signed checkpoints, erasure by crypto-shredding, retention. Portable between SQLite and
-- PostgreSQL (the same file runs on both).
-- A record whose private values are sealed names its data key; the key itself lives in
-- audit_keys, outside the chain, so destroying it changes no hash.
ALTER TABLE audit_records ADD COLUMN key_id TEXT;
-- Data keys: one per subject (`subject` is a hash of the caller's subject id), or one per record
-- (`subject` NULL). `key` is hex, or base64 of the key sealed by the master key (`wrap` names it).
CREATE TABLE audit_keys (
    id TEXT PRIMARY KEY,
    subject TEXT UNIQUE,
    key TEXT NOT NULL,
    wrap TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
-- Ed25519 signatures over the chain: `tip` (records up to seq existed, the last with this hash) and
-- `base` (retention removed the records up to seq; the chain goes on from this hash). One per
-- (mark, seq): replicas that sign the same tip keep the first.
CREATE TABLE audit_checkpoints (
    mark TEXT NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (mark, seq)
);
