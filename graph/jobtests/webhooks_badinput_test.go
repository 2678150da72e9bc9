package jobtests

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
	"fleetgraph/app"
)

// Bad input to the webhook API: refused with BAD_USER_INPUT naming the
// field (or CONFLICT for the endpoint cap), no database text, nothing written.

// whAllRows dumps every webhook row, to prove a refused request wrote nothing.
func whAllRows(t *testing.T, s *apitest.Server) string {
	t.Helper()
	var dump string
	require.NoError(t, s.DB.NewRaw(`SELECT coalesce((SELECT string_agg(row_to_json(w)::text, E'\n' ORDER BY w.id) FROM webhook_endpoints w), '')
		|| coalesce((SELECT string_agg(row_to_json(d)::text, E'\n' ORDER BY d.id) FROM webhook_deliveries d), '')
		|| coalesce((SELECT string_agg(row_to_json(e)::text, E'\n' ORDER BY e.id) FROM webhook_events e), '')`).Scan(t.Context(), &dump))
	return dump
}

func TestWebhookBadInput(t *testing.T) {
	t.Parallel()

	const create = `mutation($in: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $in) { secret } }`
	const update = `mutation($id: ID!, $in: UpdateWebhookEndpointInput!) { updateWebhookEndpoint(id: $id, input: $in) { id } }`
	in := func(url string, events ...string) map[string]any {
		if events == nil {
			events = []string{"job.completed"}
		}
		return map[string]any{"in": map[string]any{"url": url, "events": events}}
	}
	with := func(vars map[string]any, k string, v any) map[string]any {
		vars["in"].(map[string]any)[k] = v
		return vars
	}
	type bad struct {
		name, query string
		vars        map[string]any
		code, field string
	}
	run := func(t *testing.T, s *apitest.Server, token string, cases []bad) {
		for _, c := range cases {
			before := whAllRows(t, s)
			resp := s.Do(t, token, c.query, c.vars)
			apitest.RequireNoLeak(t, resp.Raw)
			apitest.RequireNoData(t, resp)
			e := resp.Code(t, c.code)
			require.NotEmpty(t, e.Message, c.name)
			if c.field != "" {
				require.Equal(t, c.field, e.Extensions["field"], "%s: %s", c.name, resp.Raw)
			}
			require.Equal(t, before, whAllRows(t, s), "%s: a refused request wrote", c.name)
		}
	}

	t.Run("Development", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := apitest.NewTenant(t, s)
		ep, _ := whEndpoint(t, tn, "https://hooks.example/ok", "job.completed")
		vars := func(v map[string]any) map[string]any { v["id"] = ep; return v }
		run(t, s, tn.User.Token, []bad{
			{"NotAURL", create, in("not a url"), "BAD_USER_INPUT", "input.url"},
			{"Empty", create, in(""), "BAD_USER_INPUT", "input.url"},
			{"OtherScheme", create, in("ftp://hooks.example/x"), "BAD_USER_INPUT", "input.url"},
			{"NoHost", create, in("https:///path"), "BAD_USER_INPUT", "input.url"},
			{"Credentials", create, in("https://user:pass@hooks.example/x"), "BAD_USER_INPUT", "input.url"},
			{"Fragment", create, in("https://hooks.example/x#frag"), "BAD_USER_INPUT", "input.url"},
			{"PortZero", create, in("https://hooks.example:0/x"), "BAD_USER_INPUT", "input.url"},
			{"PortTooLarge", create, in("https://hooks.example:99999/x"), "BAD_USER_INPUT", "input.url"},
			{"PortFarTooLarge", create, in("https://hooks.example:99999999999999999999/x"), "BAD_USER_INPUT", "input.url"},
			{"UpdatePortTooLarge", update, vars(map[string]any{"in": map[string]any{"url": "https://hooks.example:65536/x"}}), "BAD_USER_INPUT", "input.url"},
			{"TooLong", create, in("https://hooks.example/" + strings.Repeat("a", 2000)), "BAD_USER_INPUT", "input.url"},
			// Within the limit as sent, past it once escaped as stored.
			{"TooLongEscaped", create, in("https://hooks.example/" + strings.Repeat(" ", 1970) + "x"), "BAD_USER_INPUT", "input.url"},
			{"TooLongEscapedLetters", create, in("https://hooks.example/" + strings.Repeat("é", 900)), "BAD_USER_INPUT", "input.url"},
			{"UpdateTooLongEscaped", update, vars(map[string]any{"in": map[string]any{"url": "https://hooks.example/" + strings.Repeat(" ", 1970) + "x"}}), "BAD_USER_INPUT", "input.url"},
			{"NoEvents", create, in("https://hooks.example/x", []string{}...), "BAD_USER_INPUT", "input.events"},
			{"UnknownEvent", create, in("https://hooks.example/x", "job.started"), "BAD_USER_INPUT", "input.events"},
			{"EventCase", create, in("https://hooks.example/x", "job.completed", "JOB.FAILED"), "BAD_USER_INPUT", "input.events"},
			{"LongDescription", create, with(in("https://hooks.example/x"), "description", strings.Repeat("é", 501)), "BAD_USER_INPUT", "input.description"},
			{"NULDescription", create, with(in("https://hooks.example/x"), "description", "a\x00b"), "BAD_USER_INPUT", "input.description"},
			{"UpdateURL", update, vars(map[string]any{"in": map[string]any{"url": "gopher://x"}}), "BAD_USER_INPUT", "input.url"},
			{"UpdateNoEvents", update, vars(map[string]any{"in": map[string]any{"events": []string{}}}), "BAD_USER_INPUT", "input.events"},
			{"UpdateUnknownEvent", update, vars(map[string]any{"in": map[string]any{"events": []string{"robot.deleted"}}}), "BAD_USER_INPUT", "input.events"},
			{"UpdateMissing", update, map[string]any{"id": uuid.NewString(), "in": map[string]any{"description": "x"}}, "NOT_FOUND", ""},
			{"MalformedID", update, map[string]any{"id": "not-a-uuid", "in": map[string]any{"description": "x"}}, "BAD_USER_INPUT", ""},
			{"BadCursor", `query($e: ID!) { webhookDeliveries(endpointId: $e, after: "garbage") { edges { cursor } } }`, map[string]any{"e": ep}, "BAD_USER_INPUT", ""},
			{"NegativeFirst", `query($e: ID!) { webhookDeliveries(endpointId: $e, first: -1) { edges { cursor } } }`, map[string]any{"e": ep}, "BAD_USER_INPUT", ""},
			{"DeliveriesOfNoEndpoint", `query($e: ID!) { webhookDeliveries(endpointId: $e) { edges { cursor } } }`, map[string]any{"e": uuid.NewString()}, "NOT_FOUND", "endpointId"},
			{"RedeliverNothing", `mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id } }`, map[string]any{"d": uuid.NewString()}, "NOT_FOUND", ""},
		})
		// A disabled endpoint is sent no test.
		tn.Do(t, update, vars(map[string]any{"in": map[string]any{"enabled": false}}), nil)
		run(t, s, tn.User.Token, []bad{
			{"TestToDisabled", `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": ep}, "CONFLICT", ""},
		})
	})

	t.Run("AtMost50Endpoints", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t)
		tn := apitest.NewTenant(t, s)
		for range 50 {
			whEndpoint(t, tn, "https://hooks.example/x", "job.completed")
		}
		run(t, s, tn.User.Token, []bad{{"The51st", create, in("https://hooks.example/x"), "CONFLICT", ""}})
		// Another tenant has its own 50.
		whEndpoint(t, apitest.NewTenant(t, s), "https://hooks.example/x", "job.completed")
	})

	t.Run("Production", func(t *testing.T) {
		t.Parallel()
		s := apitest.New(t, apitest.Options{WebhookGuard: true, Webhooks: app.WebhookConfig{}})
		tn := apitest.NewTenant(t, s)
		run(t, s, tn.User.Token, []bad{
			{"PlainHTTP", create, in("http://hooks.example/x"), "BAD_USER_INPUT", "input.url"},
			{"Loopback", create, in("https://127.0.0.1/x"), "BAD_USER_INPUT", "input.url"},
			{"Metadata", create, in("https://169.254.169.254/latest"), "BAD_USER_INPUT", "input.url"},
			{"Private", create, in("https://10.0.0.1/"), "BAD_USER_INPUT", "input.url"},
			{"IPv6Loopback", create, in("https://[::1]/"), "BAD_USER_INPUT", "input.url"},
			{"MappedLoopback", create, in("https://[::ffff:127.0.0.1]/"), "BAD_USER_INPUT", "input.url"},
		})
		whEndpoint(t, tn, "https://hooks.example/x", "job.completed")
	})
}
