-- One Tally batch commit without a notification: upsert the counter row(s), insert the history
-- row(s), in one statement and so one transaction (Tally's APPEND, store/postgres.rs, minus the
-- idempotency CTEs and with `version + 1` for its compare-and-set: the same row lock and writes).
-- Variables (pgbench -D): spread=1 gives each client its own counters, spread=0 makes every
-- client write the same ones (a hot counter); group is how many counters one transaction
-- writes (Tally's group commit carries one batch per counter).
\set counter :client_id * :spread
WITH now AS (
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms
), c AS (
    INSERT INTO counters AS t (name, value, version, created_at_ms, updated_at_ms)
    SELECT 'c' || (:counter::bigint * :group::bigint + g), 1, 1, now.ms, now.ms
    FROM now, generate_series(1, :group::bigint) AS g
    ON CONFLICT (name) DO UPDATE
        SET value = t.value + 1, version = t.version + 1, updated_at_ms = excluded.updated_at_ms
    RETURNING t.id, t.name, t.version, t.value, t.updated_at_ms
), inserted AS (
    INSERT INTO history (counter_id, version, kind, amount, previous_value, value, at_ms, by)
    SELECT c.id, c.version, 'increment', 1, c.value - 1, c.value, c.updated_at_ms, NULL FROM c
)
SELECT c.id, NULL::text FROM c;
