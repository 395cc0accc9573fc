-- cqrs-consumer: what each consumer has handled, written in the same
-- transaction as the read-model changes it guards. See DESIGN.md,
-- "Delivery guarantees", and consumer/consumer.c.
--
-- Locks: a consumer's batches take pg_try_advisory_xact_lock_shared(
-- 1129468501, hashtext(name)); a catch-up or a replay holds the exclusive
-- session lock of the same key, so live batches wait while the store is fed
-- to the handlers (001 uses class 1129468499, 002 class 1129468500).

-- One row per consumer (the `-n NAME` of cqrs-consumer).
CREATE TABLE cqrs.consumers (
	name text PRIMARY KEY,
	-- catch-up checkpoint, in commit-safe order: (xid, position) of the last
	-- event read from the store
	xid xid8 NOT NULL DEFAULT '0',
	position bigint NOT NULL DEFAULT 0,
	-- false while the consumer catches up from the store (its first run, or a
	-- replay); true once it was caught up and the queue alone feeds it
	live boolean NOT NULL DEFAULT false,
	-- missing events at or before this position are not fetched from the
	-- store: the start of a consumer with `from = now`, else 0
	since_position bigint NOT NULL DEFAULT 0,
	replays int NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	live_at timestamptz,
	replayed_at timestamptz,
	updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The last version of each stream that a consumer has handled. Its row lock
-- (SELECT ... FOR UPDATE) serializes competing consumers per stream; an event
-- whose version is not above it is a duplicate.
CREATE TABLE cqrs.consumer_streams (
	consumer text NOT NULL,
	stream text NOT NULL,
	version int NOT NULL CHECK (version >= 0),
	PRIMARY KEY (consumer, stream)
);
