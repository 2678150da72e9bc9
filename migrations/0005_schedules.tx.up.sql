-- Cron schedules that enqueue jobs of a workflow, and the key that makes a
-- tick fire at most one job however many replicas or leaders try.

CREATE TABLE schedules (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id              uuid NOT NULL,
    name                   text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    workflow_id            uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    -- A pinned published version; NULL runs the workflow's current version.
    workflow_version       integer,
    cron_expression        text NOT NULL CHECK (char_length(cron_expression) BETWEEN 1 AND 200),
    time_zone              text NOT NULL DEFAULT 'UTC',
    -- The job template.
    input                  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    priority               integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    required_capabilities  text[] NOT NULL DEFAULT '{}',
    target_robot_id        uuid,
    max_attempts           integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    overlap_policy         text NOT NULL DEFAULT 'ALLOW' CHECK (overlap_policy IN ('ALLOW', 'SKIP', 'BUFFER_ONE')),
    catchup_window_seconds integer NOT NULL DEFAULT 3600 CHECK (catchup_window_seconds BETWEEN 10 AND 2592000),
    jitter_seconds         integer NOT NULL DEFAULT 0 CHECK (jitter_seconds BETWEEN 0 AND 3600),
    start_at               timestamptz,
    end_at                 timestamptz,
    paused                 boolean NOT NULL DEFAULT false,
    pause_note             text CHECK (char_length(pause_note) <= 500),
    paused_by              text,
    paused_at              timestamptz,
    -- The scheduler's state: the next tick due (NULL: none ever again), the
    -- one tick BUFFER_ONE holds back, and what became of past ticks.
    next_tick_at           timestamptz,
    buffered_tick_at       timestamptz,
    last_fired_at          timestamptz,
    missed_ticks           bigint NOT NULL DEFAULT 0,
    last_missed_at         timestamptz,
    skipped_ticks          bigint NOT NULL DEFAULT 0,
    last_skipped_at        timestamptz,
    last_error             text,
    last_error_at          timestamptz,
    created_by             text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    revision               bigint NOT NULL DEFAULT 1,
    CHECK (end_at IS NULL OR start_at IS NULL OR end_at > start_at)
);
CREATE UNIQUE INDEX schedules_tenant_name_key ON schedules (tenant_id, lower(name));
CREATE INDEX schedules_tenant_created_idx ON schedules (tenant_id, created_at DESC, id DESC);
-- The scheduler's round: due ticks, and ticks held back by BUFFER_ONE.
CREATE INDEX schedules_due_idx ON schedules (next_tick_at) WHERE NOT paused AND next_tick_at IS NOT NULL;
CREATE INDEX schedules_buffered_idx ON schedules (buffered_tick_at) WHERE buffered_tick_at IS NOT NULL;

-- The schedule a job was enqueued by and the tick it is for: one job per
-- (schedule, tick), so a second enqueue of the same tick fails and is a no-op.
ALTER TABLE jobs ADD COLUMN schedule_id uuid REFERENCES schedules (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN scheduled_for timestamptz;
CREATE UNIQUE INDEX jobs_schedule_tick_key ON jobs (schedule_id, scheduled_for) WHERE schedule_id IS NOT NULL;
-- SKIP and BUFFER_ONE ask whether a schedule's previous job is still live.
CREATE INDEX jobs_schedule_live_idx ON jobs (schedule_id) WHERE schedule_id IS NOT NULL AND status IN ('QUEUED', 'CLAIMED', 'RUNNING');
