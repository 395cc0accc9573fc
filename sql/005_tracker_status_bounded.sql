-- cqrs.tracker_status() counted every event after the checkpoint. After a
-- long broker outage, with millions of events behind, that one statement ran
-- for minutes: in `cqrsctl status`, and in the tracker's only loop, past its
-- watchdog (systemd killed and restarted it, and the next one did the same).
-- The counts are now bounded: whatever the backlog, the function reads at
-- most p_limit + 1 events for each of them, on the index events_xid_position.
--
-- New: p_limit (default 10000) and the column lag_exact (last, so that
-- readers by position are not disturbed). Called with one argument, as
-- before, it has the same columns first.
DROP FUNCTION cqrs.tracker_status(text);

-- Where the tracker p_name stands:
--   checkpoint_*   its checkpoint ((0, 0) before its first batch)
--   lag_events     committed events after the checkpoint: counted when at
--                  most p_limit; beyond, an estimate from positions (the
--                  store's last position minus the checkpoint's, which also
--                  counts positions left unused by rolled-back appends), and
--                  never p_limit or less
--   lag_exact      whether lag_events was counted (lag_events <= p_limit)
--   lag_seconds    age of the oldest of the first p_limit + 1 of them in
--                  commit-safe order (the oldest of all, but for a few
--                  late-committed ones); NULL when none
--   held_events    those of them that may not be published yet, because a
--                  transaction older than them is still open (commit-safe
--                  order: DESIGN.md, "Event store"), counted up to p_limit +
--                  1: p_limit + 1 means more than p_limit
--   blocker_*      the oldest open transaction that has a transaction id (it
--                  is what holds the others back), from any database of the
--                  cluster, or a prepared transaction. Other roles' sessions
--                  are visible only with pg_read_all_stats.
--   active_*       the session holding the lock (cqrs.tracker_holder)
-- p_limit below 1 counts as 1.
CREATE FUNCTION cqrs.tracker_status(p_name text, p_limit int DEFAULT 10000)
RETURNS TABLE (checkpoint_xid xid8, checkpoint_position bigint, checkpoint_at timestamptz,
	lag_events bigint, lag_seconds float8, held_events bigint,
	blocker_pid int, blocker_application text, blocker_xid xid, blocker_seconds float8,
	active_pid int, active_application text, active_client text, active_since timestamptz,
	lag_exact boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
	v_limit bigint := greatest(coalesce(p_limit, 10000), 1);
	v_xid xid8 := '0';
	v_pos bigint := 0;
	v_at timestamptz;
	v_n bigint;
	v_oldest timestamptz;
	v_held bigint;
	v_top bigint;
BEGIN
	SELECT c.xid, c.position, c.updated_at INTO v_xid, v_pos, v_at
	FROM cqrs.checkpoints c WHERE c.name = p_name;
	IF NOT FOUND THEN
		v_xid := '0';
		v_pos := 0;
	END IF;
	-- plain variables, so that each bound is an index range scan with a
	-- LIMIT (the tracker reads the same way)
	SELECT count(*), min(b.recorded_at) INTO v_n, v_oldest FROM (
		SELECT e.recorded_at FROM cqrs.events e
		WHERE (e.xid, e.position) > (v_xid, v_pos)
		ORDER BY e.xid, e.position LIMIT v_limit + 1) b;
	-- (all after the checkpoint: the tracker only ever reads, and
	-- checkpoints, events of transactions older than the snapshot's xmin.
	-- The row comparison is left out on purpose: beside it, the planner
	-- may start the scan at the checkpoint rather than at xmin.)
	SELECT count(*) INTO v_held FROM (
		SELECT 1 FROM cqrs.events e
		WHERE e.xid >= pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY e.xid, e.position LIMIT v_limit + 1) h;
	lag_exact := v_n <= v_limit;
	IF NOT lag_exact THEN
		SELECT max(e.position) INTO v_top FROM cqrs.events e;
		v_n := greatest(coalesce(v_top, 0) - v_pos, v_limit + 1);
	END IF;
	checkpoint_xid := v_xid;
	checkpoint_position := v_pos;
	checkpoint_at := v_at;
	lag_events := v_n;
	lag_seconds := extract(epoch FROM clock_timestamp() - v_oldest)::float8;
	held_events := v_held;
	SELECT x.pid, x.app, x.xid, extract(epoch FROM clock_timestamp() - x.started)::float8
	INTO blocker_pid, blocker_application, blocker_xid, blocker_seconds
	FROM (
		SELECT a.pid, a.application_name AS app, a.backend_xid AS xid,
			a.xact_start AS started
		FROM pg_stat_activity a WHERE a.backend_xid IS NOT NULL
		UNION ALL
		SELECT NULL, 'prepared transaction ' || p.gid, p.transaction, p.prepared
		FROM pg_prepared_xacts p
	) x ORDER BY age(x.xid) DESC LIMIT 1;
	SELECT h.pid, h.application_name, h.client, h.since
	INTO active_pid, active_application, active_client, active_since
	FROM cqrs.tracker_holder(p_name) h;
	RETURN NEXT;
END
$$;
