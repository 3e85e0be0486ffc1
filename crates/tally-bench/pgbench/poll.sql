-- What a poller of the history table would run on every node every :interval_ms: the counters
-- that moved since its last look, and how far. A real poller keeps a cursor (a commit-ordered
-- column it would need, looking back over transactions that committed out of order) rather than
-- a time; the rows it reads, through the index run.sh adds on at_ms, are the same. `now()` and
-- not `clock_timestamp()`: a volatile bound could not use the index.
SELECT counter_id, max(version)
FROM history
WHERE at_ms > (extract(epoch FROM now()) * 1000)::bigint - :interval_ms::bigint
GROUP BY counter_id;
