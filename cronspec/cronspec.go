// Package cronspec parses cron expressions and computes their ticks in an
// IANA time zone, with daylight-saving days defined.
//
// Expressions are parsed by robfig/cron/v3: five fields (minute hour
// day-of-month month day-of-week), an optional leading seconds field, or a
// descriptor (@yearly, @monthly, @weekly, @daily, @hourly, @every <duration>).
// The ticks of a field expression are the local wall-clock times it matches
// in its zone, mapped to instants like this:
//
//   - a local time that does not exist (skipped when clocks go forward)
//     fires once, at the next valid instant: the moment of the change;
//   - a local time that occurs twice (when clocks go back) fires once, at
//     its first occurrence;
//   - several local times that map to the same instant are one tick.
//
// @every <duration> is not wall-clock time: its ticks are the whole
// multiples of the duration since the Unix epoch, the same on every replica
// whatever the zone (@every 1h fires at the top of every UTC hour).
package cronspec

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	// Zones come with the binary, so that a host or container without
	// /usr/share/zoneinfo knows them too.
	_ "time/tzdata"
)

// MaxLength caps an expression's length.
const MaxLength = 200

// parser accepts what the package documents.
var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// fieldNames name the six fields of a full expression, seconds first.
var fieldNames = [6]string{"second", "minute", "hour", "day-of-month", "month", "day-of-week"}

// Spec is a parsed expression in a time zone.
type Spec struct {
	// civil matches wall-clock times, represented as UTC times with the
	// same fields (a zone without daylight saving); nil for @every.
	civil *cron.SpecSchedule
	// every is the period of an @every expression.
	every time.Duration
	loc   *time.Location
}

// LoadZone returns the IANA time zone name ("" is UTC), or an error saying
// why it is not one. Local, the server's own zone, is refused: a schedule's
// meaning must not depend on where the server runs.
func LoadZone(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	if name == "Local" || len(name) > 64 || strings.ContainsAny(name, "\x00\\") || strings.Contains(name, "..") {
		return nil, fmt.Errorf("%q is not an IANA time zone name such as Europe/Paris or UTC", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IANA time zone name such as Europe/Paris or UTC", name)
	}
	return loc, nil
}

// Parse parses expr for the zone loc. Its error says which field is wrong
// and why.
func Parse(expr string, loc *time.Location) (*Spec, error) {
	expr = strings.TrimSpace(expr)
	switch {
	case expr == "":
		return nil, errors.New("the expression is empty; give five fields such as `0 9 * * MON-FRI`, six with seconds first, or a descriptor such as @hourly")
	case len(expr) > MaxLength:
		return nil, fmt.Errorf("the expression is %d bytes; the limit is %d", len(expr), MaxLength)
	case strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ="):
		return nil, errors.New("give the time zone in timeZone, not in the expression")
	case strings.HasPrefix(expr, "@every"):
		return parseEvery(expr, loc)
	case strings.HasPrefix(expr, "@"):
		s, err := parser.Parse(expr)
		if err != nil {
			return nil, fmt.Errorf("%s is not a descriptor: use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>", expr)
		}
		return civilSpec(s, loc), nil
	}
	fields := strings.Fields(expr)
	if len(fields) != 5 && len(fields) != 6 {
		return nil, fmt.Errorf("the expression has %d fields; give five (minute hour day-of-month month day-of-week) or six (seconds first)", len(fields))
	}
	s, err := parser.Parse(expr)
	if err != nil {
		return nil, fieldError(fields, err)
	}
	return civilSpec(s, loc), nil
}

// fieldError finds the field that makes robfig/cron refuse the expression
// by parsing each one alone among wildcards.
func fieldError(fields []string, whole error) error {
	offset := 6 - len(fields) // five fields have no seconds
	for i, f := range fields {
		probe := []string{"*", "*", "*", "*", "*", "*"}
		probe[i+offset] = f
		if _, err := parser.Parse(strings.Join(probe, " ")); err != nil {
			return fmt.Errorf("the %s field %q is invalid: %v", fieldNames[i+offset], excerpt(f), err)
		}
	}
	return fmt.Errorf("the expression is invalid: %v", whole)
}

func excerpt(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func civilSpec(s cron.Schedule, loc *time.Location) *Spec {
	spec := *s.(*cron.SpecSchedule)
	spec.Location = time.UTC
	return &Spec{civil: &spec, loc: loc}
}

func parseEvery(expr string, loc *time.Location) (*Spec, error) {
	arg := strings.TrimSpace(strings.TrimPrefix(expr, "@every"))
	d, err := time.ParseDuration(arg)
	switch {
	case err != nil:
		return nil, fmt.Errorf("@every needs a duration such as 90s, 15m or 1h30m (got %q)", excerpt(arg))
	case d < time.Second || d%time.Second != 0:
		return nil, fmt.Errorf("@every needs a whole number of seconds, at least 1s (got %s)", arg)
	case d > 366*24*time.Hour:
		return nil, fmt.Errorf("@every may be at most 8784h, a year (got %s)", arg)
	}
	return &Spec{every: d, loc: loc}, nil
}

// Location is the zone the spec's wall-clock times are in.
func (s *Spec) Location() *time.Location { return s.loc }

// searchLimit bounds the wall-clock times Next examines: a repeated hour
// of an every-second expression is 3,600 of them.
const searchLimit = 100_000

// Next returns the first tick strictly after t, or the zero time when there
// is none within five years (robfig/cron's horizon).
func (s *Spec) Next(t time.Time) time.Time {
	if s.every > 0 {
		secs := int64(s.every / time.Second)
		u := t.Unix()
		n := u / secs
		if u < 0 && u%secs != 0 {
			n-- // floor for instants before the epoch
		}
		return time.Unix((n+1)*secs, 0).UTC()
	}
	// Every wall-clock time before t's own maps to an instant at or before
	// t (the mapping is monotonic), so the search starts at t's wall clock.
	c := wallOf(t.In(s.loc))
	for range searchLimit {
		c = s.civil.Next(c)
		if c.IsZero() {
			return time.Time{}
		}
		if at := s.instant(c); at.After(t) {
			return at.UTC()
		}
	}
	return time.Time{}
}

// instant maps the wall-clock time c (fields of a UTC time) to an instant
// in the spec's zone, as the package documents.
func (s *Spec) instant(c time.Time) time.Time {
	t := time.Date(c.Year(), c.Month(), c.Day(), c.Hour(), c.Minute(), c.Second(), 0, s.loc)
	if sameWall(t.In(s.loc), c) {
		// It exists; when clocks went back just before it, an earlier
		// occurrence may exist in the previous offset.
		start, _ := t.ZoneBounds()
		if start.IsZero() {
			return t
		}
		_, prev := start.Add(-time.Nanosecond).In(s.loc).Zone()
		_, cur := t.Zone()
		if prev > cur {
			alt := t.Add(-time.Duration(prev-cur) * time.Second)
			if alt.Before(start) && sameWall(alt.In(s.loc), c) {
				return alt
			}
		}
		return t
	}
	// It does not exist: the clocks jumped over it. The next valid instant
	// is the moment they jumped: the start of t's zone when time.Date placed
	// t after the jump (its wall clock is later than c), else the end of it.
	start, end := t.ZoneBounds()
	if wallOf(t.In(s.loc)).After(c) {
		return start
	}
	return end
}

// wallOf is t's wall clock as the fields of a UTC time.
func wallOf(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), 0, time.UTC)
}

func sameWall(t, c time.Time) bool { return wallOf(t).Equal(c) }
