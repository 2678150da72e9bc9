-- A tenant's RPA robots, their API keys, workflows and the job queue.
-- Every table carries tenant_id; the stores scope every query by it.

CREATE TABLE robots (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           uuid NOT NULL,
    name                text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    hostname            text NOT NULL DEFAULT '' CHECK (char_length(hostname) <= 255),
    status              text NOT NULL DEFAULT 'OFFLINE' CHECK (status IN ('ONLINE', 'BUSY', 'MAINTENANCE', 'OFFLINE')),
    capabilities        text[] NOT NULL DEFAULT '{}',
    max_concurrent_jobs integer NOT NULL DEFAULT 1 CHECK (max_concurrent_jobs BETWEEN 1 AND 100),
    environment         text NOT NULL DEFAULT '' CHECK (char_length(environment) <= 100),
    agent_version       text NOT NULL DEFAULT '' CHECK (char_length(agent_version) <= 64),
    metadata            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    last_heartbeat_at   timestamptz,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    revision            bigint NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX robots_tenant_name_key ON robots (tenant_id, lower(name));
CREATE INDEX robots_tenant_created_idx ON robots (tenant_id, created_at DESC, id DESC);
CREATE INDEX robots_tenant_status_idx ON robots (tenant_id, status);
CREATE INDEX robots_capabilities_idx ON robots USING gin (capabilities);
-- The sweeper finds silent robots.
CREATE INDEX robots_heartbeat_idx ON robots (last_heartbeat_at) WHERE status <> 'OFFLINE';

-- Heartbeat history, sampled (at most one row a minute per robot, plus every status change).
CREATE TABLE robot_heartbeats (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    robot_id  uuid NOT NULL REFERENCES robots (id) ON DELETE CASCADE,
    tenant_id uuid NOT NULL,
    status    text NOT NULL,
    metrics   jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX robot_heartbeats_robot_idx ON robot_heartbeats (robot_id, at DESC);

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL,
    robot_id     uuid NOT NULL REFERENCES robots (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz,
    revoked_by   text,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    last_used_ip text
);
CREATE INDEX api_keys_robot_idx ON api_keys (robot_id, created_at DESC);

-- Who did what with which key. tenant_id and api_key_id are null for unknown keys.
CREATE TABLE api_key_audit (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid,
    api_key_id uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    robot_id   uuid,
    event      text NOT NULL CHECK (event IN ('CREATED', 'REVOKED', 'USED_AFTER_REVOKE', 'EXPIRED', 'UNKNOWN_KEY')),
    actor      text,
    ip         text,
    detail     text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_key_audit_tenant_idx ON api_key_audit (tenant_id, id DESC);
CREATE INDEX api_key_audit_key_idx ON api_key_audit (api_key_id, id DESC);

CREATE TABLE workflows (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL,
    name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    description     text NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    current_version integer NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX workflows_tenant_name_key ON workflows (tenant_id, lower(name));
CREATE INDEX workflows_tenant_created_idx ON workflows (tenant_id, created_at DESC, id DESC);

-- Published definitions are immutable: there is no UPDATE path for them.
CREATE TABLE workflow_versions (
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version >= 1),
    tenant_id   uuid NOT NULL,
    definition  jsonb NOT NULL CHECK (jsonb_typeof(definition) = 'object'),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE workflow_assignments (
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    robot_id    uuid NOT NULL REFERENCES robots (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    priority    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, robot_id)
);
CREATE INDEX workflow_assignments_robot_idx ON workflow_assignments (robot_id);
CREATE UNIQUE INDEX workflow_assignments_one_default_key ON workflow_assignments (workflow_id) WHERE is_default;

CREATE TABLE node_robot_overrides (
    workflow_id uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    node_id     text NOT NULL CHECK (char_length(node_id) BETWEEN 1 AND 100),
    tenant_id   uuid NOT NULL,
    robot_id    uuid REFERENCES robots (id) ON DELETE CASCADE,
    capability  text CHECK (char_length(capability) BETWEEN 1 AND 64),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, node_id),
    CHECK ((robot_id IS NULL) <> (capability IS NULL))
);

CREATE TABLE jobs (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid NOT NULL,
    workflow_id           uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    workflow_version      integer NOT NULL,
    status                text NOT NULL DEFAULT 'QUEUED'
                          CHECK (status IN ('QUEUED', 'CLAIMED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    priority              integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    input                 jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    result                jsonb CHECK (result IS NULL OR jsonb_typeof(result) = 'object'),
    error                 text,
    progress              integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    current_node          text,
    robot_id              uuid REFERENCES robots (id) ON DELETE SET NULL,
    target_robot_id       uuid REFERENCES robots (id) ON DELETE SET NULL,
    attempt               integer NOT NULL DEFAULT 0,
    max_attempts          integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    lease_token           uuid,
    lease_expires_at      timestamptz,
    run_after             timestamptz NOT NULL DEFAULT now(),
    required_capabilities text[] NOT NULL DEFAULT '{}',
    created_by            text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_at            timestamptz,
    started_at            timestamptz,
    finished_at           timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    revision              bigint NOT NULL DEFAULT 1,
    FOREIGN KEY (workflow_id, workflow_version) REFERENCES workflow_versions (workflow_id, version)
);
-- The claim path: queued jobs of a tenant by priority, then age.
CREATE INDEX jobs_claim_idx ON jobs (tenant_id, priority DESC, created_at, id) WHERE status = 'QUEUED';
-- A robot's live jobs (slots, heartbeat lease extension, current jobs).
CREATE INDEX jobs_robot_live_idx ON jobs (robot_id) WHERE status IN ('CLAIMED', 'RUNNING');
-- The sweeper's expired leases.
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE status IN ('CLAIMED', 'RUNNING');
-- List filters, newest first.
CREATE INDEX jobs_tenant_created_idx ON jobs (tenant_id, created_at DESC, id DESC);
CREATE INDEX jobs_tenant_status_idx ON jobs (tenant_id, status, created_at DESC, id DESC);
CREATE INDEX jobs_robot_created_idx ON jobs (robot_id, created_at DESC, id DESC);
CREATE INDEX jobs_workflow_created_idx ON jobs (workflow_id, created_at DESC, id DESC);
-- Robot statistics.
CREATE INDEX jobs_robot_finished_idx ON jobs (robot_id, status) WHERE status IN ('COMPLETED', 'FAILED');

CREATE TABLE job_logs (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id    uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    tenant_id uuid NOT NULL,
    robot_id  uuid,
    level     text NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARN', 'ERROR')),
    message   text NOT NULL CHECK (char_length(message) <= 8000),
    fields    jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX job_logs_job_idx ON job_logs (job_id, id DESC);
