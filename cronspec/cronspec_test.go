package cronspec_test

import (
	"archive/zip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"fleetgraph/cronspec"
)

func mustSpec(t *testing.T, expr, zone string) *cronspec.Spec {
	t.Helper()
	loc, err := cronspec.LoadZone(zone)
	require.NoError(t, err)
	s, err := cronspec.Parse(expr, loc)
	require.NoError(t, err)
	return s
}

// ticks lists the ticks in (from, to].
func ticks(s *cronspec.Spec, from, to time.Time) []time.Time {
	var out []time.Time
	for t := s.Next(from); !t.IsZero() && !t.After(to); t = s.Next(t) {
		out = append(out, t)
	}
	return out
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

func TestDaylightSaving(t *testing.T) {
	t.Parallel()

	t.Run("ParisSpringForwardFiresANonexistentTimeOnceAtTheJump", func(t *testing.T) {
		// 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
		s := mustSpec(t, "30 2 * * *", "Europe/Paris")
		require.Equal(t, []time.Time{utc("2026-03-28T01:30:00Z"), utc("2026-03-29T01:00:00Z"), utc("2026-03-30T00:30:00Z")},
			ticks(s, utc("2026-03-27T12:00:00Z"), utc("2026-03-30T12:00:00Z")))
	})
	t.Run("ParisFallBackFiresARepeatedTimeOnce", func(t *testing.T) {
		// 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
		s := mustSpec(t, "30 2 * * *", "Europe/Paris")
		require.Equal(t, []time.Time{utc("2026-10-24T00:30:00Z"), utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")},
			ticks(s, utc("2026-10-23T12:00:00Z"), utc("2026-10-26T12:00:00Z")))
	})
	t.Run("ParisEveryMinuteOnBothDays", func(t *testing.T) {
		s := mustSpec(t, "* * * * *", "Europe/Paris")
		// The local day of 23 hours: the skipped hour's minutes collapse into the jump.
		spring := ticks(s, utc("2026-03-28T22:59:00Z"), utc("2026-03-29T21:59:00Z"))
		require.Equal(t, 23*60, len(spring))
		require.Equal(t, utc("2026-03-29T00:59:00Z"), spring[119]) // 01:59 CET
		require.Equal(t, utc("2026-03-29T01:00:00Z"), spring[120]) // 03:00 CEST
		// The local day of 25 hours: the repeated hour fires once.
		fall := ticks(s, utc("2026-10-24T21:59:00Z"), utc("2026-10-25T22:59:00Z"))
		require.Equal(t, 24*60, len(fall))
		require.Equal(t, utc("2026-10-25T00:59:00Z"), fall[179]) // 02:59 CEST, first occurrence
		require.Equal(t, utc("2026-10-25T02:00:00Z"), fall[180]) // 03:00 CET: the second 02:xx is skipped
	})
	t.Run("NewYork", func(t *testing.T) {
		// 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
		require.Equal(t, []time.Time{utc("2026-03-08T07:00:00Z"), utc("2026-03-09T06:15:00Z")},
			ticks(mustSpec(t, "15 2 * * *", "America/New_York"), utc("2026-03-07T12:00:00Z"), utc("2026-03-09T12:00:00Z")))
		// 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens at 05:30 and 06:30 UTC.
		require.Equal(t, []time.Time{utc("2026-11-01T05:30:00Z"), utc("2026-11-02T06:30:00Z")},
			ticks(mustSpec(t, "30 1 * * *", "America/New_York"), utc("2026-10-31T12:00:00Z"), utc("2026-11-02T12:00:00Z")))
		// Asking from inside the second 01:xx does not go back to the first.
		require.Equal(t, utc("2026-11-02T06:30:00Z"), mustSpec(t, "30 1 * * *", "America/New_York").Next(utc("2026-11-01T06:10:00Z")))
	})
}

func TestNext(t *testing.T) {
	t.Parallel()
	require.Equal(t, utc("2026-12-02T10:00:30Z"), mustSpec(t, "30 * * * * *", "").Next(utc("2026-12-02T10:00:00Z")), "six fields: seconds first")
	require.Equal(t, utc("2026-12-02T11:00:00Z"), mustSpec(t, "@hourly", "").Next(utc("2026-12-02T10:20:00Z")))
	require.Equal(t, utc("2026-12-02T11:00:00Z"), mustSpec(t, "@every 1h", "Europe/Paris").Next(utc("2026-12-02T10:00:00Z")))
	require.Equal(t, utc("2026-12-02T10:01:30Z"), mustSpec(t, "@every 90s", "").Next(utc("2026-12-02T10:00:00.5Z")))
	require.True(t, mustSpec(t, "0 0 30 2 *", "").Next(utc("2026-12-02T10:00:00Z")).IsZero(), "30 February never comes")
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for expr, want := range map[string]string{
		"":                   "empty",
		"61 * * * *":         "minute field \"61\"",
		"* 24 * * *":         "hour field",
		"0 0 * * FOO":        "day-of-week field",
		"0 0 0 * *":          "day-of-month field",
		"0 0 * 13 *":         "month field",
		"99 0 0 * * *":       "second field",
		"* * * *":            "4 fields",
		"* * * * * * *":      "7 fields",
		"@fortnightly":       "not a descriptor",
		"@every soon":        "@every needs a duration",
		"@every 1500ms":      "whole number of seconds",
		"TZ=UTC * * * * *":   "timeZone",
		"CRON_TZ=UTC @daily": "timeZone",
	} {
		_, err := cronspec.Parse(expr, time.UTC)
		require.ErrorContains(t, err, want, expr)
	}
	// Names only the host's zoneinfo folder knows, which the binary's
	// tzdata lacks: localtime is the host's own zone (Local) by another
	// name, so one schedule fired at different instants on two hosts, and
	// a replica without the folder refused the others.
	for _, zone := range []string{"Mars/Olympus", "Local", "../etc/passwd", "Europe/Paris\x00", "localtime", "posixrules", "right/UTC", "posix/Europe/Paris"} {
		_, err := cronspec.LoadZone(zone)
		require.Error(t, err, zone)
	}
	// Every zone of the tzdata the binary embeds loads.
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	require.NoError(t, err)
	zr, err := zip.OpenReader(filepath.Join(strings.TrimSpace(string(goroot)), "lib", "time", "zoneinfo.zip"))
	require.NoError(t, err)
	defer zr.Close()
	require.Greater(t, len(zr.File), 500)
	for _, f := range zr.File {
		_, err := cronspec.LoadZone(f.Name)
		require.NoError(t, err, f.Name)
	}
}

// Count and Prev agree with stepping through the ticks one by one, over
// stretches that cross daylight-saving changes (a 30-minute one in
// Lord Howe), month ends and leap days, for every kind of expression.
func TestCountAndPrev(t *testing.T) {
	t.Parallel()
	exprs := []string{"* * * * * *", "*/7 * * * * *", "0 30 2 * * *", "15 1-3 * * *", "0 9-17 * * 1-5",
		"0 0 29 2 *", "0 0 1,15 * 5", "30 2 * 3,10 0", "@hourly", "@daily", "@every 90s", "@every 7h"}
	zones := []string{"UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"}
	starts := []time.Time{utc("2026-03-08T05:59:58Z"), utc("2026-03-28T22:00:00Z"), utc("2026-10-24T23:10:07Z"), utc("2028-02-27T12:00:00Z"), utc("2026-04-04T14:00:00Z"),
		utc("2026-10-31T20:00:00Z"), utc("2026-10-03T14:00:00Z")}
	spans := []time.Duration{0, time.Second, 61 * time.Second, 3 * time.Hour, 26 * time.Hour, 9 * 24 * time.Hour}
	for _, expr := range exprs {
		for _, zone := range zones {
			s := mustSpec(t, expr, zone)
			for _, from := range starts {
				for _, span := range spans {
					if expr == "* * * * * *" && span > 26*time.Hour {
						continue // a million ticks to step through: the test's, not Count's, cost
					}
					from := from.Add(123 * time.Millisecond)
					to := from.Add(span)
					want := ticks(s, from, to)
					require.EqualValues(t, len(want), s.Count(from, to), "%s in %s, (%s, %s]", expr, zone, from, to)
					if len(want) > 0 {
						require.Equal(t, want[len(want)-1], s.Prev(to), "%s in %s, last tick by %s", expr, zone, to)
						require.Equal(t, want[len(want)-1], s.Prev(want[len(want)-1]), "%s in %s: a tick is its own Prev", expr, zone)
					}
				}
			}
		}
	}
	// Work that does not grow with the ticks: a year of every second, less
	// the hour clocks skip in March (its wall-clock times are one tick, at
	// the jump) and the repeated hour of October (fired once).
	s := mustSpec(t, "* * * * * *", "Europe/Paris")
	from := utc("2026-01-01T00:00:00Z")
	require.EqualValues(t, 365*24*3600-3600, s.Count(from, from.AddDate(1, 0, 0)))
	require.Equal(t, from.AddDate(1, 0, 0), s.Prev(from.AddDate(1, 0, 0).Add(999*time.Millisecond)))
}

// Day-of-week 7 is Sunday, as in standard cron and pg_cron: alone, in
// lists, as a range's end (SUN too), with steps counted over 0-7. Each
// expression fires exactly as its 0-based equivalent, over five weeks in
// Paris (a daylight-saving change among them), and counts alike.
func TestDayOfWeekSeven(t *testing.T) {
	t.Parallel()
	for expr, same := range map[string]string{
		"0 0 * * 7":          "0 0 * * 0",
		"0 0 * * 7-7":        "0 0 * * 0",
		"0 0 * * 1,7":        "0 0 * * 1,0",
		"0 0 * * 5-7":        "0 0 * * 5,6,0",
		"0 0 * * 0-7":        "0 0 * * 0-6",
		"0 0 * * MON-SUN":    "0 0 * * 1-6,0",
		"0 0 * * sat-sun":    "0 0 * * 6,0",
		"0 0 * * 1-7/2":      "0 0 * * 1,3,5,0",
		"0 0 * * FRI-SUN/2":  "0 0 * * 5,0",
		"0 0 * * 0-7/7":      "0 0 * * 0",
		"0 0 * * */2":        "0 0 * * 0,2,4,6",
		"0 0 * * 7,3-4":      "0 0 * * 0,3,4",
		"7 7 * * 7":          "7 7 * * 0",
		"0 0 0 * * 7":        "0 0 0 * * 0",
		"30 9 13 * 7":        "30 9 13 * 0", // a day of month and a weekday: either
		"0 12 * 3,4 MON-SUN": "0 12 * 3,4 1-6,0",
	} {
		s, want := mustSpec(t, expr, "Europe/Paris"), mustSpec(t, same, "Europe/Paris")
		from, to := utc("2026-03-01T00:00:00Z"), utc("2026-04-05T00:00:00Z")
		require.NotEmpty(t, ticks(want, from, to), same)
		require.Equal(t, ticks(want, from, to), ticks(s, from, to), "%q fires as %q", expr, same)
		require.Equal(t, want.Count(from, to), s.Count(from, to), "%q counts as %q", expr, same)
	}
	// Still refused: past 7, a range ending before it starts, and the forms
	// robfig/cron does not know (last, weekday, nth weekday, pg_cron's $ and
	// interval syntax).
	for expr, want := range map[string]string{
		"0 0 * * 8":     "day-of-week field \"8\"",
		"0 0 * * 6-8":   "day-of-week field \"6-8\"",
		"0 0 * * 7-1":   "day-of-week field \"7-1\"",
		"0 0 * * 1-0":   "day-of-week field \"1-0\"",
		"0 0 * * 5L":    "day-of-week field",
		"0 0 * * 5#3":   "day-of-week field",
		"0 0 L * *":     "day-of-month field",
		"0 0 15W * *":   "day-of-month field",
		"0 0 $ * *":     "day-of-month field",
		"10 seconds":    "2 fields",
		"7 7 7 7 7 7 7": "7 fields",
	} {
		_, err := cronspec.Parse(expr, time.UTC)
		require.ErrorContains(t, err, want, expr)
	}
}
