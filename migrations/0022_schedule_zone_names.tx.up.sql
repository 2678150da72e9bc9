-- A schedule's time zone is an IANA name (cronspec.LoadZone): the host's
-- zoneinfo folder's posix/X and right/X were accepted before. A stored one
-- becomes X, which the binary's tzdata has, so the schedule keeps firing
-- where it did (a right/ zone's ticks move by its leap seconds, 27 s).
-- localtime and posixrules name the host's own zone, which nothing here
-- can tell: such a schedule stops at its next tick, its lastError saying
-- why, until its timeZone is set.
UPDATE schedules SET time_zone = substr(time_zone, strpos(time_zone, '/') + 1)
WHERE time_zone ~ '^(posix|right)/[A-Z]';
