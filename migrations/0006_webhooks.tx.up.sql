-- The revision that feeds subscribers is the database's to bump: every
-- UPDATE of a job that changes what the API shows bumps revision and
-- updated_at, whatever statement made it; one that changes nothing visible
-- (a heartbeat extending a lease) bumps neither. Statements never set them.
CREATE FUNCTION fleetgraph_job_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(NEW) - '{lease_expires_at,updated_at,revision}'::text[])
       IS DISTINCT FROM (to_jsonb(OLD) - '{lease_expires_at,updated_at,revision}'::text[]) THEN
        NEW.revision := OLD.revision + 1;
        NEW.updated_at := now();
    ELSE
        NEW.revision := OLD.revision;
        NEW.updated_at := OLD.updated_at;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_revision BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION fleetgraph_job_revision();

-- Webhook endpoints of a tenant. The signing secret is kept as given to the
-- tenant (whsec_...), since the server must sign with it; after a rotation
-- the previous one signs alongside until previous_secret_expires_at.
CREATE TABLE webhook_endpoints (
    id                         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                  uuid NOT NULL,
    url                        text NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2000),
    description                text NOT NULL DEFAULT '' CHECK (char_length(description) <= 500),
    events                     text[] NOT NULL CHECK (cardinality(events) >= 1),
    enabled                    boolean NOT NULL DEFAULT true,
    disabled_reason            text,
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    -- The time of the first failed attempt since the last success: an
    -- endpoint failing for WebhookConfig.DisableAfter is disabled.
    failing_since              timestamptz,
    created_by                 text NOT NULL,
    created_at                 timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, created_at DESC, id DESC);

-- The outbox: one row per event, written in the transaction of the change
-- that causes it, only when some enabled endpoint of the tenant wants it.
-- subject_id is the job or robot the event is about (the endpoint, for
-- test events); data is that job or robot as the API shows it.
CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL,
    type       text NOT NULL,
    subject_id uuid NOT NULL,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One event to one endpoint. seq orders the deliveries of a subject to an
-- endpoint: one goes out only when no earlier one is still PENDING. Times
-- the delivery task sets (next_attempt_at, lease_until, finished_at, the
-- attempts' times) come from the maintenance clock; next_attempt_at NULL
-- means due now. attempts holds every attempt (at most the retry schedule's
-- length, each with at most 1 KiB of the response).
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id       uuid NOT NULL,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    subject_id      uuid NOT NULL,
    event_type      text NOT NULL,
    status          text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    attempt_count   integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    lease_until     timestamptz,
    attempts        jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(attempts) = 'array'),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz
);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (seq) WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (endpoint_id, subject_id, seq) WHERE status = 'PENDING';
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
