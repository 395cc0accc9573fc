-- Least privilege. Four NOLOGIN roles, one per kind of daemon; an operator
-- grants one to each daemon's login role (docs/deploy.md). None of them may
-- write cqrs.events itself: appends go through cqrs.append(), which runs
-- with its owner's rights (SECURITY DEFINER) and a fixed search_path, so a
-- handler bug or a stolen password can add events only as a command does,
-- and never UPDATE, DELETE, TRUNCATE or ALTER them (only the owner could
-- DISABLE TRIGGER, and no daemon needs to be the owner).
--
--   cqrs_writer    cqrs-cmdd: append, load aggregates, snapshots, command ids
--   cqrs_tracker   cqrs-tracker: read events, its checkpoint and lock
--   cqrs_consumer  cqrs-consumer: read events, its bookkeeping
--   cqrs_reader    cqrsctl read, read-all, status: read only
--
-- Roles belong to the cluster, not to the database: migrating a second
-- database of the same cluster finds them there (and two migrations at once
-- may race to create one: the loser carries on).
DO $$
DECLARE
	r text;
BEGIN
	FOREACH r IN ARRAY ARRAY['cqrs_writer', 'cqrs_tracker', 'cqrs_consumer', 'cqrs_reader'] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
			BEGIN
				EXECUTE format('CREATE ROLE %I NOLOGIN', r);
			EXCEPTION WHEN duplicate_object OR unique_violation THEN
				NULL;
			END;
		END IF;
	END LOOP;
END $$;

-- functions are everybody's to call unless said otherwise
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cqrs FROM PUBLIC;

ALTER FUNCTION cqrs.append(text, bigint, uuid, jsonb, text)
	SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

GRANT USAGE ON SCHEMA cqrs TO cqrs_writer, cqrs_tracker, cqrs_consumer, cqrs_reader;

GRANT EXECUTE ON FUNCTION cqrs.append(text, bigint, uuid, jsonb, text) TO cqrs_writer;
GRANT SELECT ON cqrs.events, cqrs.commands TO cqrs_writer;
GRANT SELECT, INSERT, UPDATE ON cqrs.snapshots TO cqrs_writer;

GRANT SELECT ON cqrs.events TO cqrs_tracker;
GRANT SELECT, INSERT, UPDATE ON cqrs.checkpoints TO cqrs_tracker;
GRANT EXECUTE ON FUNCTION cqrs.tracker_try_lock(text), cqrs.tracker_holds_lock(text),
	cqrs.tracker_holder(text), cqrs.tracker_status(text, int) TO cqrs_tracker;

GRANT SELECT ON cqrs.events TO cqrs_consumer;
GRANT SELECT, INSERT, UPDATE, DELETE ON cqrs.consumers, cqrs.consumer_streams TO cqrs_consumer;

GRANT SELECT ON cqrs.events, cqrs.checkpoints, cqrs.consumers, cqrs.consumer_streams,
	cqrs.migrations TO cqrs_reader;
GRANT EXECUTE ON FUNCTION cqrs.tracker_holder(text), cqrs.tracker_status(text, int)
	TO cqrs_reader;
