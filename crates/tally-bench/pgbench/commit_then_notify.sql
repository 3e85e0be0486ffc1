-- commit.sql, then the notification in a transaction of its own with synchronous_commit off:
-- what Tally could do if NOTIFY in the write's transaction cost too much. The notify lock is
-- then held for a commit that waits for no flush, instead of across the write's fsync; the
-- data was durable before the notification went out, and a notification lost with a crash
-- is covered by the listeners reading everything again when they reconnect.
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
SELECT string_agg(c.name || ' ' || c.version, ',') AS changed FROM c \gset
BEGIN;
SELECT set_config('synchronous_commit', 'off', true);
SELECT pg_notify('tally_changes', change) FROM unnest(string_to_array(:changed, ',')) AS change;
COMMIT;
