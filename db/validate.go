package db

import (
	"encoding/json"
	"regexp"
	"strings"
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

// checkJSONObject validates a client JSON object: at most MaxJSONBytes, and no
// NUL characters (PostgreSQL's jsonb cannot store them). nil becomes {}.
func checkJSONObject(field string, v map[string]any) (map[string]any, error) {
	if v == nil {
		return map[string]any{}, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fault.Invalid(field, "%s is not valid JSON", field)
	}
	if len(b) > MaxJSONBytes {
		return nil, fault.Invalid(field, "%s is %d bytes; the limit is %d", field, len(b), MaxJSONBytes)
	}
	if strings.Contains(string(b), `\u0000`) {
		return nil, fault.Invalid(field, "%s must not contain NUL characters", field)
	}
	return v, nil
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

// likePattern escapes a user's substring for ILIKE.
func likePattern(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(s) + "%"
}
