-- Group commit: several commands, each on its own stream, appended in one
-- round trip and one transaction, each with its own outcome. And a cheaper
-- append: one index less on cqrs.events.

-- Consumers looking for the missing events of their own types read one
-- stream's versions in a range: the (stream, version) key finds them, and the
-- type is checked on the few rows it gives. An index that every append paid
-- for and no read needs.
DROP INDEX cqrs.events_stream_type_version;

-- append_batch(batch): batch is a JSON array of commands, each
--   {"stream": text, "expected": -1 any | 0 new | N (default -1),
--    "id": command id (uuid) or null, "command": name or null,
--    "metadata": {} for every event of the command (default {}),
--    "events": [{"id","type","data","metadata"?}, ...]}
-- with at most one command per stream and per command id (else SQLSTATE
-- 22023 and nothing is done). Each command is all-or-nothing and gets its own
-- outcome; one command's outcome never changes another's. Rows, n being the
-- command's place in the batch (1-based):
--   ok         one row per event written (id, version, position, type); a
--              command without events: one row, id NULL, version = current
--   duplicate  the command id was recorded: the events it wrote then (or one
--              row with id NULL and its version then); nothing written
--   conflict   the stream is at `version`, not at the expected one
--   id_reused  the id was recorded for another stream or command (detail)
--   invalid    the store refused an event (detail: why); nothing written
-- Every stream is locked, in one order for everybody (the lock's key), and
-- every version and command id read, before anything is written: the
-- transaction takes its id only after, which keeps each stream in version
-- order for readers that order by (xid, position) (see 001).
CREATE FUNCTION cqrs.append_batch(p_batch jsonb)
RETURNS TABLE (n int, status text, id uuid, version int, "position" bigint, type text, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
	v_shape_bad bool;
	v_twice bool;
	v_stream_keys int[];		-- the locks to take, in order
	v_id_keys int[];
	v_empty bool := false;		-- a command without events
	c record;
	v_ok int[] := '{}';		-- commands to write: their places,
	v_streams text[] := '{}';	-- streams,
	v_base int[] := '{}';		-- versions before
	v_bad int[] := '{}';		-- refused by the store, and why
	v_why text[] := '{}';
	r_stream text[]; r_id uuid[]; r_version int[]; r_pos bigint[]; r_type text[];
	w_stream text[]; w_id uuid[]; w_version int[]; w_pos bigint[]; w_type text[];
BEGIN
	IF jsonb_typeof(p_batch) IS DISTINCT FROM 'array' THEN
		RAISE EXCEPTION 'append_batch: the batch is not a JSON array' USING ERRCODE = '22023';
	END IF;
	-- one statement for the checks and the keys (each statement costs)
	SELECT coalesce(bool_or(jsonb_typeof(x) <> 'object' OR coalesce(x->>'stream', '') = ''
				OR jsonb_typeof(x->'events') IS DISTINCT FROM 'array'), false),
	       count(*) <> count(DISTINCT x->>'stream') OR
		       count(x->>'id') <> count(DISTINCT (x->>'id')::uuid),
	       array_agg(DISTINCT hashtext(x->>'stream') ORDER BY hashtext(x->>'stream')),
	       array_agg(DISTINCT hashtext((x->>'id')::uuid::text)
			 ORDER BY hashtext((x->>'id')::uuid::text)) FILTER (WHERE x->>'id' IS NOT NULL)
	INTO v_shape_bad, v_twice, v_stream_keys, v_id_keys
	FROM jsonb_array_elements(p_batch) x;
	IF v_shape_bad THEN
		RAISE EXCEPTION 'append_batch: every command needs a stream and an events array'
			USING ERRCODE = '22023';
	END IF;
	IF v_twice THEN
		RAISE EXCEPTION 'append_batch: two commands on one stream or with one id'
			USING ERRCODE = '22023';
	END IF;

	-- the streams' locks, then the command ids' (as cqrs.append takes
	-- them), each in key order: unnest gives an array's elements in order
	PERFORM pg_advisory_xact_lock(1129468499, k) FROM unnest(v_stream_keys) AS k;
	IF v_id_keys IS NOT NULL THEN
		PERFORM pg_advisory_xact_lock(1129468502, k) FROM unnest(v_id_keys) AS k;
	END IF;

	-- every version and recorded id, read before anything is written
	FOR c IN
		SELECT t.ord::int AS ord, t.x->>'stream' AS stream,
		       coalesce((t.x->>'expected')::bigint, -1) AS expected,
		       t.x->>'command' AS command, jsonb_array_length(t.x->'events') AS n_events,
		       coalesce((SELECT max(e.version) FROM cqrs.events e
				 WHERE e.stream = t.x->>'stream'), 0) AS cur,
		       k.id AS rec_id, k.stream AS rec_stream, k.command AS rec_command,
		       k.first_version, k.last_version
		FROM jsonb_array_elements(p_batch) WITH ORDINALITY AS t(x, ord)
		LEFT JOIN cqrs.commands k ON k.id = (t.x->>'id')::uuid
		ORDER BY t.ord
	LOOP
		IF c.rec_id IS NOT NULL THEN
			IF c.rec_stream <> c.stream OR (c.rec_command IS NOT NULL AND
			   c.command IS NOT NULL AND c.rec_command <> c.command) THEN
				RETURN QUERY SELECT c.ord, 'id_reused', NULL::uuid, NULL::int,
					NULL::bigint, NULL::text,
					format('command id %s was recorded for %s on stream "%s"',
					       c.rec_id, coalesce(c.rec_command, 'a command'), c.rec_stream);
			ELSIF c.last_version < c.first_version THEN
				RETURN QUERY SELECT c.ord, 'duplicate', NULL::uuid, c.last_version,
					NULL::bigint, NULL::text, NULL::text;
			ELSE
				RETURN QUERY SELECT c.ord, 'duplicate', e.id, e.version, e.position,
					e.type, NULL::text
					FROM cqrs.events e
					WHERE e.stream = c.rec_stream
					  AND e.version BETWEEN c.first_version AND c.last_version
					ORDER BY e.version;
			END IF;
		ELSIF c.expected >= 0 AND c.expected <> c.cur THEN
			RETURN QUERY SELECT c.ord, 'conflict', NULL::uuid, c.cur, NULL::bigint,
				NULL::text, format('stream "%s" is at version %s, expected %s',
						   c.stream, c.cur, c.expected);
		ELSE
			v_ok := v_ok || c.ord;
			v_streams := v_streams || c.stream;
			v_base := v_base || c.cur;
			v_empty := v_empty OR c.n_events = 0;
		END IF;
	END LOOP;
	IF cardinality(v_ok) = 0 THEN
		RETURN;
	END IF;

	-- all the events in one statement; should the store refuse one, each
	-- command again on its own, to refuse that one only
	BEGIN
		WITH w AS (
			INSERT INTO cqrs.events AS e (stream, version, id, type, data, metadata)
			SELECT b.stream, b.base + v.ord::int, (v.ev->>'id')::uuid, v.ev->>'type',
			       v.ev->'data', coalesce(v.ev->'metadata', p_batch->(b.ord - 1)->'metadata', '{}')
			FROM unnest(v_ok, v_streams, v_base) AS b(ord, stream, base),
			     jsonb_array_elements(p_batch->(b.ord - 1)->'events') WITH ORDINALITY AS v(ev, ord)
			ORDER BY b.ord, v.ord
			RETURNING e.stream, e.id, e.version, e.position, e.type
		)
		SELECT array_agg(w.stream), array_agg(w.id), array_agg(w.version),
		       array_agg(w.position), array_agg(w.type)
		INTO r_stream, r_id, r_version, r_pos, r_type FROM w;
		IF v_id_keys IS NOT NULL THEN
			INSERT INTO cqrs.commands (id, stream, first_version, last_version, command)
			SELECT (x->>'id')::uuid, b.stream, b.base + 1,
			       b.base + jsonb_array_length(x->'events'), x->>'command'
			FROM unnest(v_ok, v_streams, v_base) AS b(ord, stream, base),
			     LATERAL (SELECT p_batch->(b.ord - 1) AS x) AS q
			WHERE x->>'id' IS NOT NULL;
		END IF;
	EXCEPTION WHEN data_exception OR integrity_constraint_violation OR
		       SQLSTATE 'CQ403' THEN
		r_stream := '{}'; r_id := '{}'; r_version := '{}'; r_pos := '{}'; r_type := '{}';
		FOR i IN 1 .. cardinality(v_ok) LOOP
			BEGIN
				WITH w AS (
					INSERT INTO cqrs.events AS e (stream, version, id, type, data, metadata)
					SELECT v_streams[i], v_base[i] + v.ord::int, (v.ev->>'id')::uuid,
					       v.ev->>'type', v.ev->'data',
					       coalesce(v.ev->'metadata', p_batch->(v_ok[i] - 1)->'metadata', '{}')
					FROM jsonb_array_elements(p_batch->(v_ok[i] - 1)->'events')
					     WITH ORDINALITY AS v(ev, ord)
					ORDER BY v.ord
					RETURNING e.stream, e.id, e.version, e.position, e.type
				)
				SELECT array_agg(w.stream), array_agg(w.id), array_agg(w.version),
				       array_agg(w.position), array_agg(w.type)
				INTO w_stream, w_id, w_version, w_pos, w_type FROM w;
				INSERT INTO cqrs.commands (id, stream, first_version, last_version, command)
				SELECT (x->>'id')::uuid, v_streams[i], v_base[i] + 1,
				       v_base[i] + jsonb_array_length(x->'events'), x->>'command'
				FROM (SELECT p_batch->(v_ok[i] - 1) AS x) AS q
				WHERE x->>'id' IS NOT NULL;
				r_stream := r_stream || w_stream;
				r_id := r_id || w_id;
				r_version := r_version || w_version;
				r_pos := r_pos || w_pos;
				r_type := r_type || w_type;
			EXCEPTION WHEN data_exception OR integrity_constraint_violation OR
				       SQLSTATE 'CQ403' THEN
				v_bad := v_bad || v_ok[i];
				v_why := v_why || SQLERRM;
			END;
		END LOOP;
	END;

	RETURN QUERY
		SELECT b.ord, 'ok', w.id, w.version, w.position, w.type, NULL::text
		FROM unnest(v_ok, v_streams) AS b(ord, stream)
		JOIN unnest(r_stream, r_id, r_version, r_pos, r_type)
		     AS w(stream, id, version, position, type) ON w.stream = b.stream
		ORDER BY b.ord, w.version;
	-- commands that raised no event (recorded for their id only)
	IF v_empty THEN
		RETURN QUERY
			SELECT b.ord, 'ok', NULL::uuid, b.base, NULL::bigint, NULL::text, NULL::text
			FROM unnest(v_ok, v_streams, v_base) AS b(ord, stream, base)
			WHERE jsonb_array_length(p_batch->(b.ord - 1)->'events') = 0
			  AND b.ord <> ALL (v_bad);
	END IF;
	IF cardinality(v_bad) > 0 THEN
		RETURN QUERY
			SELECT b.ord, 'invalid', NULL::uuid, NULL::int, NULL::bigint, NULL::text, b.why
			FROM unnest(v_bad, v_why) AS b(ord, why);
	END IF;
END $$;

-- The queries inside both append functions are index lookups whatever the
-- values: planning them afresh at each call (plpgsql's custom plans) cost
-- more PostgreSQL CPU per append than running them. And a plan made while a
-- table was empty (a new store, or statistics taken then) must not scan it
-- whole at every call for ever after: no sequential scans in them.
ALTER FUNCTION cqrs.append_batch(jsonb)
	SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
ALTER FUNCTION cqrs.append(text, bigint, uuid, jsonb, text)
	SET plan_cache_mode = force_generic_plan SET enable_seqscan = off;
REVOKE EXECUTE ON FUNCTION cqrs.append_batch(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cqrs.append_batch(jsonb) TO cqrs_writer;
