-- cqrs-tracker: the advisory lock that keeps one tracker of a name active,
-- and the status that the tracker reports and `cqrsctl status` prints.
-- See DESIGN.md, "Delivery guarantees".
--
-- The lock is session-level, key (1129468500, hashtext(name)); 001 uses
-- class 1129468499 for stream appends and migrations. A tracker whose session
-- ends (crash, kill -9, network loss, server restart) loses it at once, and a
-- standby's next cqrs.tracker_try_lock() wins.

CREATE FUNCTION cqrs.tracker_try_lock(p_name text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
	SELECT pg_try_advisory_lock(1129468500, hashtext(p_name))
$$;

-- Whether the calling session holds the lock: the tracker's checkpoint write
-- checks it in the same statement, so a tracker that lost its lock can never
-- move the checkpoint.
CREATE FUNCTION cqrs.tracker_holds_lock(p_name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
	SELECT EXISTS (
		SELECT 1 FROM pg_locks l
		WHERE l.locktype = 'advisory' AND l.granted AND l.pid = pg_backend_pid()
		  AND l.classid = 1129468500 AND l.objid = hashtext(p_name)::oid
		  AND l.objsubid = 2)
$$;

-- The session holding the lock of p_name (no row when no tracker is active).
-- application_name is "cqrs-tracker@HOST:PID" for cqrs-tracker's sessions.
CREATE FUNCTION cqrs.tracker_holder(p_name text)
RETURNS TABLE (pid int, application_name text, client text, since timestamptz)
LANGUAGE sql STABLE AS $$
	SELECT a.pid, a.application_name,
		coalesce(host(a.client_addr), 'local'), a.backend_start
	FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
	WHERE l.locktype = 'advisory' AND l.granted
	  AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
	  AND l.classid = 1129468500 AND l.objid = hashtext(p_name)::oid AND l.objsubid = 2
	LIMIT 1
$$;

-- Where the tracker p_name stands:
--   checkpoint_*   its checkpoint ((0, 0) before its first batch)
--   lag_events     committed events after the checkpoint
--   lag_seconds    age of the oldest of them (NULL when none)
--   held_events    those of them that may not be published yet, because a
--                  transaction older than them is still open (commit-safe
--                  order: DESIGN.md, "Event store")
--   blocker_*      the oldest open transaction that has a transaction id (it
--                  is what holds the others back), from any database of the
--                  cluster, or a prepared transaction. Other roles' sessions
--                  are visible only with pg_read_all_stats.
--   active_*       the session holding the lock (cqrs.tracker_holder)
CREATE FUNCTION cqrs.tracker_status(p_name text)
RETURNS TABLE (checkpoint_xid xid8, checkpoint_position bigint, checkpoint_at timestamptz,
	lag_events bigint, lag_seconds float8, held_events bigint,
	blocker_pid int, blocker_application text, blocker_xid xid, blocker_seconds float8,
	active_pid int, active_application text, active_client text, active_since timestamptz)
LANGUAGE sql STABLE AS $$
	WITH cp AS (
		SELECT coalesce(c.xid, '0'::xid8) AS xid, coalesce(c.position, 0) AS position,
			c.updated_at
		FROM (SELECT 1) AS one LEFT JOIN cqrs.checkpoints c ON c.name = p_name
	), behind AS (
		SELECT count(*) AS n, min(e.recorded_at) AS oldest,
			count(*) FILTER (WHERE e.xid >= pg_snapshot_xmin(pg_current_snapshot())) AS held
		FROM cqrs.events e, cp
		WHERE (e.xid, e.position) > (cp.xid, cp.position)
	), blocker AS (
		SELECT x.pid, x.app, x.xid, x.started FROM (
			SELECT a.pid, a.application_name AS app, a.backend_xid AS xid,
				a.xact_start AS started
			FROM pg_stat_activity a WHERE a.backend_xid IS NOT NULL
			UNION ALL
			SELECT NULL, 'prepared transaction ' || p.gid, p.transaction, p.prepared
			FROM pg_prepared_xacts p
		) x ORDER BY age(x.xid) DESC LIMIT 1
	)
	SELECT cp.xid, cp.position, cp.updated_at,
		behind.n, extract(epoch FROM clock_timestamp() - behind.oldest)::float8, behind.held,
		b.pid, b.app, b.xid, extract(epoch FROM clock_timestamp() - b.started)::float8,
		h.pid, h.application_name, h.client, h.since
	FROM cp CROSS JOIN behind
	LEFT JOIN blocker b ON true
	LEFT JOIN cqrs.tracker_holder(p_name) h ON true
$$;
