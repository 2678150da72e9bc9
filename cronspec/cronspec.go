// Package cronspec parses cron expressions and computes their ticks in an
// IANA time zone, with daylight-saving days defined.
//
// Expressions are parsed by robfig/cron/v3: five fields (minute hour
// day-of-month month day-of-week), an optional leading seconds field, or a
// descriptor (@yearly, @monthly, @weekly, @daily, @hourly, @every <duration>).
// In the day-of-week field 7 is Sunday as well as 0, as in standard cron and
// pg_cron (robfig/cron knows only 0-6: Parse rewrites the field first).
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
	"math/bits"
	"regexp"
	"strconv"
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
	// IANA names are components that start with a capital letter. The
	// host's zoneinfo folder has other files LoadLocation would read:
	// localtime (its /etc/localtime, Local by another name), posixrules,
	// right/... and posix/..., which the binary's tzdata lacks, so a
	// replica without the folder would refuse them.
	if name == "Local" || len(name) > 64 || !ianaName.MatchString(name) {
		return nil, fmt.Errorf("%q is not an IANA time zone name such as Europe/Paris or UTC", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("%q is not an IANA time zone name such as Europe/Paris or UTC", name)
	}
	return loc, nil
}

// ianaName is the shape of every name in the IANA time zone database.
var ianaName = regexp.MustCompile(`^[A-Z][A-Za-z0-9_+-]*(/[A-Z][A-Za-z0-9_+-]*)*$`)

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
	parsed := append([]string(nil), fields...)
	parsed[len(parsed)-1] = sundaySeven(parsed[len(parsed)-1]) // day-of-week is always last
	s, err := parser.Parse(strings.Join(parsed, " "))
	if err != nil {
		return nil, fieldError(parsed, fields, err)
	}
	return civilSpec(s, loc), nil
}

// fieldError finds the field that makes robfig/cron refuse the expression
// by parsing each one alone among wildcards. parsed are the fields given
// to robfig/cron, fields as written, which the error quotes.
func fieldError(parsed, fields []string, whole error) error {
	offset := 6 - len(fields) // five fields have no seconds
	for i, f := range parsed {
		probe := []string{"*", "*", "*", "*", "*", "*"}
		probe[i+offset] = f
		if _, err := parser.Parse(strings.Join(probe, " ")); err != nil {
			hint := ""
			if i == len(parsed)-1 {
				// robfig/cron's own maximum (6) is not ours.
				hint = " (days are 0-7, 0 and 7 both Sunday, or SUN-SAT)"
			}
			return fmt.Errorf("the %s field %q is invalid: %v%s", fieldNames[i+offset], excerpt(fields[i]), err, hint)
		}
	}
	return fmt.Errorf("the expression is invalid: %v", whole)
}

// sundaySeven rewrites a day-of-week field for robfig/cron, which knows
// only 0-6, so that 7 is Sunday too. Each comma-separated part that reaches
// 7 (7 itself, a range ending at 7, or at SUN after another day, as in
// MON-SUN) becomes the list of its days, counted over 0-7 with its step
// and 7 written 0: 5-7 is 5,6,0 and 1-7/2 is 1,3,5,0. The other parts
// (wildcards such as */2, which never reach 7, included) and whatever it
// cannot read are left as written, for robfig/cron to accept or refuse: 8
// and 7-1 are still refused. Only parts without a wildcard are rewritten,
// so the field's wildcard marker, which decides how day-of-month and
// day-of-week combine, is unchanged.
func sundaySeven(field string) string {
	parts := strings.Split(field, ",")
	for i, p := range parts {
		parts[i] = sundaySevenPart(p)
	}
	return strings.Join(parts, ",")
}

func sundaySevenPart(p string) string {
	rng, step := p, 1
	if r, st, ok := strings.Cut(p, "/"); ok {
		n, err := strconv.Atoi(st)
		if err != nil || n < 1 {
			return p
		}
		rng, step = r, n
	}
	loText, hiText, isRange := strings.Cut(rng, "-")
	lo, ok := weekday(loText)
	if !ok {
		return p
	}
	hi := lo // a lone day; robfig/cron reads N/step as N through 6, which 7 is past
	if isRange {
		if hi, ok = weekday(hiText); !ok {
			return p
		}
		if hi == 0 && lo > 0 && strings.EqualFold(hiText, "sun") {
			hi = 7 // a range ending on SUN ends at the week's end
		}
	}
	if hi != 7 || lo > hi {
		return p
	}
	var days []string
	for d := lo; d <= hi; d += step {
		days = append(days, strconv.Itoa(d%7))
	}
	return strings.Join(days, ",")
}

// weekday reads a day of the week as a number 0-7 or a name (SUN-SAT,
// any case).
func weekday(s string) (int, bool) {
	if n, err := strconv.Atoi(s); err == nil {
		return n, n >= 0 && n <= 7
	}
	for i, name := range []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"} {
		if strings.EqualFold(s, name) {
			return i, true
		}
	}
	return 0, false
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

// guard is how close to a change of the zone's offset Count steps from
// tick to tick rather than counting: wider than any offset change, so that
// the counted stretches hold only wall-clock times that occur once.
const guard = 3 * time.Hour

// Count returns the number of ticks t with after < t <= until. Its work
// grows with the days between the two and with the ticks within a few
// hours of a daylight-saving change, not with the ticks in between: a
// year of an every-second expression costs about as much as a day, so
// the scheduler counts the ticks of a long outage without visiting them.
func (s *Spec) Count(after, until time.Time) int64 {
	if !until.After(after) {
		return 0
	}
	if s.every > 0 {
		secs := int64(s.every / time.Second)
		return floorDiv(until.Unix(), secs) - floorDiv(after.Unix(), secs)
	}
	var n int64
	for cur := after; cur.Before(until); {
		start, end := cur.In(s.loc).ZoneBounds()
		var near time.Time // the end of the stretch to step through, if cur is near a change
		switch {
		case !start.IsZero() && cur.Before(start.Add(guard)):
			near = start.Add(guard)
		case !end.IsZero() && !cur.Before(end.Add(-guard)):
			near = end.Add(guard)
		}
		if !near.IsZero() {
			near = minTime(near, until)
			for t := s.Next(cur); !t.IsZero() && !t.After(near); t = s.Next(t) {
				n++
			}
			cur = near
			continue
		}
		to := until
		if !end.IsZero() {
			to = minTime(to, end.Add(-guard))
		}
		// One offset, away from its changes: instants and wall-clock
		// times map one to one.
		n += s.wallCount(wallOf(cur.In(s.loc)), wallOf(to.In(s.loc)))
		cur = to
	}
	return n
}

// Prev returns the last tick at or before t, or the zero time when there
// is none within five years before it. Like Count, it does not visit the
// ticks between.
func (s *Spec) Prev(t time.Time) time.Time {
	if s.every > 0 {
		secs := int64(s.every / time.Second)
		return time.Unix(floorDiv(t.Unix(), secs)*secs, 0).UTC()
	}
	// Ticks are whole seconds. Widen a window back from t until it holds
	// a tick, then find the last one by bisection: the least whole second
	// x with no tick in (x, t] is it.
	top := floorDiv(t.Unix(), 1)
	for span := int64(1); span <= 5*366*24*3600; span *= 2 {
		lo := top - span // a second with a tick after it, once Count says so
		if s.Count(time.Unix(lo, 0), t) == 0 {
			continue
		}
		hi := top // no tick in (hi, t]
		for hi-lo > 1 {
			mid := lo + (hi-lo)/2
			if s.Count(time.Unix(mid, 0), t) == 0 {
				hi = mid
			} else {
				lo = mid
			}
		}
		return time.Unix(hi, 0).UTC()
	}
	return time.Time{}
}

// wallCount is the number of wall-clock times w the expression matches
// with a < w <= b (fields of UTC times, whole seconds).
func (s *Spec) wallCount(a, b time.Time) int64 {
	c := s.civil
	perDay := ones(c.Hour) * ones(c.Minute) * ones(c.Second)
	var n int64
	dayB := b.Truncate(24 * time.Hour)
	for d := a.Truncate(24 * time.Hour); d.Before(dayB); d = d.AddDate(0, 0, 1) {
		if s.dayMatches(d) {
			n += perDay
		}
	}
	return n + s.upTo(b) - s.upTo(a)
}

// upTo is the number of wall-clock times the expression matches on c's
// day at or before c's time of day.
func (s *Spec) upTo(c time.Time) int64 {
	if !s.dayMatches(c) {
		return 0
	}
	sp := s.civil
	h, m, sec := c.Clock()
	n := ones(sp.Hour&below(h)) * ones(sp.Minute) * ones(sp.Second)
	if has(sp.Hour, h) {
		n += ones(sp.Minute&below(m)) * ones(sp.Second)
		if has(sp.Minute, m) {
			n += ones(sp.Second & below(sec+1))
		}
	}
	return n
}

// dayMatches is robfig/cron's rule for a day: its month, and its day of
// month and day of week (both when either is a wildcard, else either).
func (s *Spec) dayMatches(d time.Time) bool {
	sp := s.civil
	if !has(sp.Month, int(d.Month())) {
		return false
	}
	dom, dow := has(sp.Dom, d.Day()), has(sp.Dow, int(d.Weekday()))
	if sp.Dom&starBit != 0 || sp.Dow&starBit != 0 {
		return dom && dow
	}
	return dom || dow
}

// starBit marks a field written as a wildcard in robfig/cron's bit sets.
const starBit = 1 << 63

func ones(set uint64) int64      { return int64(bits.OnesCount64(set &^ starBit)) }
func has(set uint64, i int) bool { return set&(1<<uint(i)) != 0 }
func below(i int) uint64         { return 1<<uint(i) - 1 }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
