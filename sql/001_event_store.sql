-- The event store: events, recorded command ids, snapshots, checkpoints,
-- and the append function. See DESIGN.md, "Event store".

CREATE TABLE cqrs.events (
	position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	stream text NOT NULL CHECK (stream <> ''),
	version int NOT NULL CHECK (version >= 1),
	id uuid NOT NULL UNIQUE,
	type text NOT NULL CHECK (type <> ''),
	data jsonb NOT NULL CHECK (jsonb_typeof(data) = 'object'),
	metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
	recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	-- the writing transaction: readers order by (xid, position) and stop at
	-- the oldest transaction still running, so late commits are not skipped
	xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
	CONSTRAINT events_stream_version UNIQUE (stream, version)
);
CREATE INDEX events_xid_position ON cqrs.events (xid, position);
-- consumers look for missing events of their own types in one indexed read
CREATE INDEX events_stream_type_version ON cqrs.events (stream, type, version);

-- Events are appended, only.
CREATE FUNCTION cqrs.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'cqrs.events is append-only: % refused', TG_OP
		USING ERRCODE = 'CQ403';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON cqrs.events
	FOR EACH ROW EXECUTE FUNCTION cqrs.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON cqrs.events
	FOR EACH STATEMENT EXECUTE FUNCTION cqrs.refuse_change();

-- Command ids that appended, with the versions they wrote: a repeated id
-- returns these events again and appends nothing.
CREATE TABLE cqrs.commands (
	id uuid PRIMARY KEY,
	stream text NOT NULL,
	first_version int NOT NULL,
	last_version int NOT NULL,
	recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE cqrs.snapshots (
	stream text PRIMARY KEY,
	version int NOT NULL CHECK (version >= 1),
	data jsonb NOT NULL,
	recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Read positions in commit-safe order: (xid, position) of the last event done.
CREATE TABLE cqrs.checkpoints (
	name text PRIMARY KEY,
	xid xid8 NOT NULL DEFAULT '0',
	position bigint NOT NULL DEFAULT 0,
	updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- append(stream, expected, command_id, events): one round trip, atomic.
--   expected: -1 any, 0 the stream must not exist, N the stream is at N.
--   events: a JSON array of {"id","type","data","metadata"}.
-- Returns the events written (or, for a command id already recorded, the
-- events it wrote then, with duplicate = true). A version mismatch raises
-- SQLSTATE CQ409 with the stream's current version in DETAIL.
CREATE FUNCTION cqrs.append(p_stream text, p_expected bigint, p_command_id uuid, p_events jsonb)
RETURNS TABLE (id uuid, version int, "position" bigint, type text, duplicate boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
	v_current int;
	v_cmd cqrs.commands%ROWTYPE;
	v_n int;
BEGIN
	-- Writers of one stream queue here. An advisory lock takes no
	-- transaction id, and the version below must be read before this
	-- transaction gets one: that keeps each stream in version order when
	-- readers order by (xid, position).
	PERFORM pg_advisory_xact_lock(1129468499, hashtext(p_stream));

	IF p_command_id IS NOT NULL THEN
		SELECT * INTO v_cmd FROM cqrs.commands c WHERE c.id = p_command_id;
		IF FOUND THEN
			RETURN QUERY SELECT e.id, e.version, e.position, e.type, true
				FROM cqrs.events e
				WHERE e.stream = v_cmd.stream
				  AND e.version BETWEEN v_cmd.first_version AND v_cmd.last_version
				ORDER BY e.version;
			RETURN;
		END IF;
	END IF;

	SELECT coalesce(max(e.version), 0) INTO v_current
		FROM cqrs.events e WHERE e.stream = p_stream;
	IF p_expected >= 0 AND p_expected <> v_current THEN
		RAISE EXCEPTION 'stream "%" is at version %, expected %',
			p_stream, v_current, p_expected
			USING ERRCODE = 'CQ409', DETAIL = v_current::text;
	END IF;

	v_n := jsonb_array_length(p_events);
	RETURN QUERY
		INSERT INTO cqrs.events AS e (stream, version, id, type, data, metadata)
		SELECT p_stream, v_current + t.ord::int, (t.ev->>'id')::uuid,
			t.ev->>'type', t.ev->'data', coalesce(t.ev->'metadata', '{}')
		FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(ev, ord)
		ORDER BY t.ord
		RETURNING e.id, e.version, e.position, e.type, false;

	IF p_command_id IS NOT NULL THEN
		INSERT INTO cqrs.commands (id, stream, first_version, last_version)
			VALUES (p_command_id, p_stream, v_current + 1, v_current + v_n);
	END IF;
END $$;
