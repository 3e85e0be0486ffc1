-- What a poller of the history table would run on every node every :interval_ms: the counters
-- that moved since its last look, and how far. (A real poller keeps a cursor rather than a time,
-- and must look back over transactions that committed out of order; the rows it reads, through
-- the index run.sh adds on at_ms, are the same.)
SELECT counter_id, max(version)
FROM history
WHERE at_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint - :interval_ms::bigint
GROUP BY counter_id;
