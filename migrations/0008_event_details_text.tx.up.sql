-- Event details given as text, as the API Fleetgraph replaces took them
-- (logMachineEvent's details: "disk full"): kept exactly as given, while
-- details holds {"text": <the same string>} so that every reader of the
-- jsonb column still sees an object.
--
-- Adding a nullable column without a default rewrites nothing. The check is
-- added NOT VALID: existing rows, whose details_text is NULL, satisfy it,
-- and a scan of the event log under the migration's lock would prove no more.
ALTER TABLE machine_events ADD COLUMN details_text text;
ALTER TABLE machine_events ADD CONSTRAINT machine_events_details_text_check
    CHECK (details_text IS NULL OR details = jsonb_build_object('text', details_text)) NOT VALID;
