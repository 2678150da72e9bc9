-- Machines a user owns, their event log and their protocol deployments.
-- Every table carries tenant_id; the store scopes every query by it.

CREATE TABLE machines (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    owner_id        uuid NOT NULL,
    name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    status          text NOT NULL DEFAULT 'STOPPED' CHECK (status IN ('STOPPED', 'RUNNING', 'ERROR')),
    configuration   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(configuration) = 'object'),
    last_started_at timestamptz,
    last_stopped_at timestamptz,
    -- clock_timestamp, not now(): machines created in one transaction still
    -- get distinct, ordered creation times for newest-first pagination.
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         bigint NOT NULL DEFAULT 1
);

-- Names are unique per owner, case-insensitively.
CREATE UNIQUE INDEX machines_owner_name_key ON machines (tenant_id, owner_id, lower(name));
-- The caller's machines, newest first (keyset pagination), with or without a status filter.
CREATE INDEX machines_owner_created_idx ON machines (tenant_id, owner_id, created_at DESC, id DESC);
CREATE INDEX machines_owner_status_created_idx ON machines (tenant_id, owner_id, status, created_at DESC, id DESC);
-- service_role lists the whole tenant.
CREATE INDEX machines_tenant_created_idx ON machines (tenant_id, created_at DESC, id DESC);

CREATE TABLE machine_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    machine_id  uuid NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL,
    event_type  text NOT NULL CHECK (char_length(event_type) BETWEEN 1 AND 64),
    details     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    actor       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A machine's events newest first, optionally of some types.
CREATE INDEX machine_events_machine_idx ON machine_events (machine_id, id DESC);
CREATE INDEX machine_events_machine_type_idx ON machine_events (machine_id, event_type, id DESC);

CREATE TABLE deployments (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    machine_id    uuid NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    tenant_id     uuid NOT NULL,
    name          text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    version       text NOT NULL,
    settings      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    status        text NOT NULL CHECK (status IN ('PENDING', 'ACTIVE', 'SUPERSEDED')),
    deployed_by   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    activated_at  timestamptz,
    superseded_at timestamptz
);

-- A machine's deployments newest first.
CREATE INDEX deployments_machine_idx ON deployments (machine_id, created_at DESC, id DESC);
-- At most one ACTIVE and one PENDING deployment per machine, enforced by the database.
CREATE UNIQUE INDEX deployments_one_active_key ON deployments (machine_id) WHERE status = 'ACTIVE';
CREATE UNIQUE INDEX deployments_one_pending_key ON deployments (machine_id) WHERE status = 'PENDING';
