-- A command id belongs to one command on one stream. cqrs.commands now
-- keeps the command's name, and cqrs.append() refuses an id recorded for
-- another stream or another command (SQLSTATE CQ422) instead of answering
-- with the first stream's events. A recorded command that appended nothing
-- is a duplicate too: append() answers it with one row whose id is NULL.
ALTER TABLE cqrs.commands ADD COLUMN command text;

DROP FUNCTION cqrs.append(text, bigint, uuid, jsonb);

-- append(stream, expected, command_id, events, command): as in 001, plus
--   command: the command's name (NULL: not checked); an id already recorded
--   for another stream, or for another command when both names are known,
--   raises CQ422 and appends nothing. A duplicate of a command that wrote no
--   events returns one row (NULL, its version then, NULL, NULL, true).
CREATE FUNCTION cqrs.append(p_stream text, p_expected bigint, p_command_id uuid,
			    p_events jsonb, p_command text DEFAULT NULL)
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
		-- one id on two streams at once: the second waits for the first
		-- and finds it recorded (always taken after the stream's lock)
		PERFORM pg_advisory_xact_lock(1129468502, hashtext(p_command_id::text));
		SELECT * INTO v_cmd FROM cqrs.commands c WHERE c.id = p_command_id;
		IF FOUND THEN
			IF v_cmd.stream <> p_stream OR (v_cmd.command IS NOT NULL AND
			   p_command IS NOT NULL AND v_cmd.command <> p_command) THEN
				RAISE EXCEPTION 'command id % was recorded for % on stream "%"',
					p_command_id, coalesce(v_cmd.command, 'a command'), v_cmd.stream
					USING ERRCODE = 'CQ422';
			END IF;
			IF v_cmd.last_version < v_cmd.first_version THEN
				RETURN QUERY SELECT NULL::uuid, v_cmd.last_version, NULL::bigint,
					NULL::text, true;
				RETURN;
			END IF;
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
		INSERT INTO cqrs.commands (id, stream, first_version, last_version, command)
			VALUES (p_command_id, p_stream, v_current + 1, v_current + v_n, p_command);
	END IF;
END $$;
