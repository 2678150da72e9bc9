// Package accept chooses a response's media type from a request's Accept
// header (RFC 9110 §12.5.1), for every transport of the GraphQL endpoint:
// JSON, the GraphQL response type, server-sent events and multipart
// subscriptions are one choice.
package accept

import (
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// Header is the Accept header of h as one list: a list header may be
// split over several lines (RFC 9110 §5.3), which mean the same as one
// line joined with commas.
func Header(h http.Header) string { return strings.Join(h.Values("Accept"), ", ") }

// Choose returns the offer the Accept header ranks highest, or "" when it
// accepts none of them. Each offer takes the q-value of the most specific
// range that matches it (type/subtype over type/* over */*). Among offers
// of equal q, one matched by a more specific range wins, then one whose
// range is listed earlier, then the earlier offer. A missing header, or one
// with no range that parses, accepts anything: the first offer.
func Choose(header string, offers ...string) string {
	ranges := parse(header)
	if len(ranges) == 0 {
		if len(offers) == 0 {
			return ""
		}
		return offers[0]
	}
	best, bestRank := "", rank{}
	for _, offer := range offers {
		r, ok := match(ranges, offer)
		if !ok || r.q == 0 {
			continue
		}
		if best == "" || r.better(bestRank) {
			best, bestRank = offer, r
		}
	}
	return best
}

// mediaRange is one parsed member of an Accept header.
type mediaRange struct {
	typ, subtype string
	q            float64
	order        int
}

// rank is how well a range accepts an offer.
type rank struct {
	q           float64
	specificity int // 2: type/subtype, 1: type/*, 0: */*
	order       int
}

func (a rank) better(b rank) bool {
	if a.q != b.q {
		return a.q > b.q
	}
	if a.specificity != b.specificity {
		return a.specificity > b.specificity
	}
	return a.order < b.order
}

// parse returns the ranges of header that parse, with their q-values; a
// range with a malformed q is dropped.
func parse(header string) []mediaRange {
	var out []mediaRange
	for i, part := range elements(header) {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		typ, subtype, ok := strings.Cut(mt, "/")
		if !ok || (typ == "*" && subtype != "*") {
			continue
		}
		q := 1.0
		if v, ok := params["q"]; ok {
			if q, err = strconv.ParseFloat(v, 64); err != nil || !(q >= 0 && q <= 1) { // NaN too
				continue
			}
		}
		out = append(out, mediaRange{typ: typ, subtype: subtype, q: q, order: i})
	}
	return out
}

// match returns the rank of the most specific range accepting offer.
func match(ranges []mediaRange, offer string) (rank, bool) {
	typ, subtype, _ := strings.Cut(offer, "/")
	best, found := rank{}, false
	for _, r := range ranges {
		var s int
		switch {
		case r.typ == typ && r.subtype == subtype:
			s = 2
		case r.typ == typ && r.subtype == "*":
			s = 1
		case r.typ == "*":
			s = 0
		default:
			continue
		}
		// The most specific range decides; among equals, the first listed.
		if !found || s > best.specificity {
			best, found = rank{q: r.q, specificity: s, order: r.order}, true
		}
	}
	return best, found
}

// The media types the GraphQL endpoint answers in.
const (
	// JSON is application/json, the answer when the client names no
	// preference; request errors are answered 200.
	JSON = "application/json"
	// GraphQLResponse is the GraphQL-over-HTTP response type, whose status
	// says whether execution started (request errors are 4xx).
	GraphQLResponse = "application/graphql-response+json"
	// EventStream is server-sent events (the SSE transport).
	EventStream = "text/event-stream"
	// Multipart is multipart/mixed, which the multipart transport answers
	// only to ranges that carry subscriptionSpec (Apollo's subscription
	// format): see WithoutPlainMultipart.
	Multipart = "multipart/mixed"
)

// WithoutPlainMultipart drops from an Accept header the multipart ranges
// that carry no subscriptionSpec parameter: those ask for Apollo's @defer
// format (deferSpec), which this server does not speak, so they must not
// select the multipart transport.
func WithoutPlainMultipart(header string) string {
	parts := elements(header)
	kept := parts[:0]
	for _, part := range parts {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err == nil && strings.HasPrefix(mt, "multipart/") && params["subscriptionspec"] == "" {
			continue
		}
		kept = append(kept, part)
	}
	return strings.Join(kept, ",")
}

// elements splits a header's comma-separated list (RFC 9110 §5.6.1),
// leaving the commas inside a quoted parameter value (§5.6.4, where a
// backslash escapes the next character) in their element:
// `text/event-stream;note="a,b"` is one range, not two that fail to parse.
func elements(header string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(header); i++ {
		switch c := header[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			out = append(out, header[start:i])
			start = i + 1
		}
	}
	return append(out, header[start:])
}
