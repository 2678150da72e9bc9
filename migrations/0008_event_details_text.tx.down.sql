-- Text details stay readable as {"text": ...} in details.
ALTER TABLE machine_events DROP CONSTRAINT IF EXISTS machine_events_details_text_check;
ALTER TABLE machine_events DROP COLUMN IF EXISTS details_text;
