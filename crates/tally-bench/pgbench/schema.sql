-- The two tables a Tally commit writes, as in migration 1 of crates/tally-server/src/store/postgres.rs
-- (without the idempotency, API key and meta tables, which a plain increment does not touch).
CREATE TABLE counters (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    value BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE history (
    counter_id BIGINT NOT NULL REFERENCES counters (id),
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    amount BIGINT,
    previous_value BIGINT NOT NULL,
    value BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    by TEXT,
    PRIMARY KEY (counter_id, version)
);
