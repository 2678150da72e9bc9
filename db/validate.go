package db

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"fleetgraph/fault"
)

// MaxJSONBytes caps every JSON document a client stores (configuration,
// settings, event details), measured as compact JSON.
const MaxJSONBytes = 64 << 10

// checkName validates a display name: 1-100 characters after trimming, no
// control characters. It returns the trimmed name.
func checkName(field, name string) (string, error) {
	name = strings.TrimSpace(name)
	n := utf8.RuneCountInString(name)
	switch {
	case !utf8.ValidString(name):
		return "", fault.Invalid(field, "%s must be valid UTF-8", field)
	case n == 0:
		return "", fault.Invalid(field, "%s must not be empty", field)
	case n > 100:
		return "", fault.Invalid(field, "%s must be at most 100 characters (got %d)", field, n)
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return "", fault.Invalid(field, "%s must not contain control characters", field)
	}
	return name, nil
}

// checkRawJSONObject is checkJSONObjectText for a caller that stores the
// object: it returns the compact JSON text the check encoded, as a RawJSON,
// rather than the map (which the caller would have to encode again).
func checkRawJSONObject(field string, v map[string]any) (RawJSON, error) {
	_, text, err := checkJSONObjectText(field, v)
	if err != nil {
		return nil, err
	}
	return RawJSON(text), nil
}

// checkJSONObjectText validates a client JSON object: at most
// MaxJSONBytes, and no NUL characters (PostgreSQL's jsonb cannot store
// them). nil becomes {}.
//
// The size is that of the compact JSON as jsonb stores it: without HTML
// escaping (which would count "<" as six bytes), and with numbers written out
// in full, since jsonb expands exponents (a 9-byte 1e100000 is stored as
// 100001 digits). Numbers PostgreSQL's numeric cannot hold are refused here
// rather than failing in the database.
//
// It returns the object and its compact JSON text, for a caller that
// stores it as text (log ingest), sparing a second encoding.
func checkJSONObjectText(field string, v map[string]any) (map[string]any, string, error) {
	if len(v) == 0 {
		return map[string]any{}, "{}", nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, "", fault.Invalid(field, "%s is not valid JSON", field)
	}
	size := buf.Len() - 1 // Encode ends with a newline
	if size > MaxJSONBytes {
		return nil, "", fault.Invalid(field, "%s is %d bytes; the limit is %d", field, size, MaxJSONBytes)
	}
	w := jsonWalk{size: size}
	w.walk(v)
	switch {
	case w.notUTF8:
		return nil, "", fault.Invalid(field, "%s must be valid UTF-8 (a key or string is not)", field)
	case w.nul:
		return nil, "", fault.Invalid(field, "%s must not contain NUL characters", field)
	case w.badNumber != "":
		return nil, "", fault.Invalid(field, "%s holds a number out of range (%.40s); numbers may have at most %d digits before and %d after the decimal point",
			field, w.badNumber, maxNumericIntDigits, maxNumericScale)
	case w.size > MaxJSONBytes:
		return nil, "", fault.Invalid(field, "%s is %d bytes with its numbers written out; the limit is %d", field, w.size, MaxJSONBytes)
	}
	return v, string(buf.Bytes()[:size]), nil
}

// checkEventDetails validates an event's details and returns the object to
// store: the object itself, or {"text": ...} for details given as text,
// which must be valid UTF-8 without NUL (PostgreSQL's text cannot hold it)
// and at most MaxJSONBytes.
func checkEventDetails(in EventDetails) (RawJSON, error) {
	if in.Text == nil {
		return checkRawJSONObject("details", in.Object)
	}
	t := *in.Text
	switch {
	case len(t) > MaxJSONBytes:
		return nil, fault.Invalid("details", "details is %d bytes; the limit is %d", len(t), MaxJSONBytes)
	case !utf8.ValidString(t):
		return nil, fault.Invalid("details", "details must be valid UTF-8")
	case strings.ContainsRune(t, 0):
		return nil, fault.Invalid("details", "details must not contain NUL characters")
	}
	// The object holds the text again: a string of up to MaxJSONBytes,
	// escaped, may exceed MaxJSONBytes as JSON, and needs no second check.
	return objectJSON(map[string]any{"text": t}), nil
}

// PostgreSQL's numeric, which jsonb uses for every number, holds at most this
// many digits before and after the decimal point.
const (
	maxNumericIntDigits = 131072
	maxNumericScale     = 16383
)

// jsonWalk visits a decoded JSON value for what its encoding cannot show: NUL
// characters, and the size of its numbers once PostgreSQL expands them.
type jsonWalk struct {
	size      int // compact size, corrected for expanded numbers
	nul       bool
	notUTF8   bool // a key or string holds bytes that are not UTF-8 (encoded as U+FFFD)
	badNumber string
}

func (w *jsonWalk) walk(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			w.nul = w.nul || strings.ContainsRune(k, 0)
			w.notUTF8 = w.notUTF8 || !utf8.ValidString(k)
			w.walk(e)
		}
	case []any:
		for _, e := range t {
			w.walk(e)
		}
	case string:
		w.nul = w.nul || strings.ContainsRune(t, 0)
		w.notUTF8 = w.notUTF8 || !utf8.ValidString(t)
	case json.Number, float64, float32, int, int64, int32:
		lit, _ := json.Marshal(t) // the same text the whole document was encoded with
		n, ok := storedNumberLen(string(lit))
		if !ok {
			w.badNumber = string(lit)
			return
		}
		w.size += n - len(lit)
	}
}

// storedNumberLen returns an upper bound on the length of the JSON number lit
// as jsonb stores it (exponent expanded: 1.5e3 is 1500, 1e-3 is 0.001), and
// false when numeric cannot hold it.
func storedNumberLen(lit string) (int, bool) {
	mantissa, exp := lit, 0
	if i := strings.IndexAny(lit, "eE"); i >= 0 {
		e, err := strconv.Atoi(lit[i+1:])
		if err != nil || e > maxNumericIntDigits || e < -maxNumericScale-1 {
			return 0, false
		}
		mantissa, exp = lit[:i], e
	}
	n := 0
	if strings.HasPrefix(mantissa, "-") {
		n, mantissa = 1, mantissa[1:]
	}
	intPart, frac, _ := strings.Cut(mantissa, ".")
	intDigits := max(1, len(intPart)+exp)
	scale := max(0, len(frac)-exp)
	if intDigits > maxNumericIntDigits || scale > maxNumericScale {
		return 0, false
	}
	n += intDigits
	if scale > 0 {
		n += 1 + scale
	}
	return n, true
}

// semverRE is the regular expression semver.org recommends.
var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

func checkSemver(field, v string) error {
	if len(v) > 64 || !semverRE.MatchString(v) {
		return fault.Invalid(field, "%s must be a semantic version such as 1.4.0 or 2.0.0-rc.1", field)
	}
	return nil
}

var eventTypeRE = regexp.MustCompile(`^[a-z][a-z0-9_.\-]{0,63}$`)

func checkEventType(field, v string) error {
	if !eventTypeRE.MatchString(v) {
		return fault.Invalid(field, "%s must be 1-64 characters of lowercase letters, digits, _ . -, starting with a letter", field)
	}
	return nil
}

// The instants every time input must lie in, as Unix seconds: from
// 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z. PostgreSQL's
// timestamptz has no year 0 (lib/pq and bun write it as "0000", which the
// server refuses as out of range, an INTERNAL error), and RFC 3339, in which
// clients send and receive times, has only four-digit years; the microsecond
// cap is the precision timestamptz keeps, so no stored time rounds up into
// year 10000.
const (
	minTimeUnix = -62135596800
	maxTimeUnix = 253402300799
	maxTimeNano = 999_999_000
)

// TimeRange describes the times Fleetgraph accepts, for error messages.
const TimeRange = "between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z"

// TimeInRange reports whether t (in any zone) lies within TimeRange once in
// UTC, so that PostgreSQL can store and compare it and RFC 3339 can write it.
func TimeInRange(t time.Time) bool {
	u := t.Unix()
	return u >= minTimeUnix && (u < maxTimeUnix || (u == maxTimeUnix && t.Nanosecond() <= maxTimeNano))
}

// AsStored is t as PostgreSQL will store it, in UTC to the microsecond (the driver
// writes six digits), so that what is checked (end after start, say) is
// what is stored; ok is false for a time out of TimeRange.
func AsStored(t time.Time) (stored time.Time, ok bool) {
	if !TimeInRange(t) {
		return time.Time{}, false
	}
	return t.UTC().Truncate(time.Microsecond), true
}

// checkText refuses text PostgreSQL cannot store as given: bytes that are
// not UTF-8 (a bound parameter fails the statement with the driver's
// "invalid byte sequence", one bun writes inline is stored as U+FFFD), and
// the NUL character. Every free-text input of the package passes through it.
func checkText(field, s string) error {
	if !utf8.ValidString(s) {
		return fault.Invalid(field, "%s must be valid UTF-8", field)
	}
	if strings.ContainsRune(s, 0) {
		return fault.Invalid(field, "%s must not contain NUL characters", field)
	}
	return nil
}

// likePattern escapes a user's substring for ILIKE.
func likePattern(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(s) + "%"
}
