package jobtests

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/apitest"
)

// Webhook endpoints, deliveries and secrets are their tenant's users'
// alone: another tenant sees and changes none of them (NOT_FOUND, as for
// what does not exist), robots reach none of them (FORBIDDEN), no secret is
// readable after it was shown, and another tenant's events never reach an
// endpoint. Every refused attack is followed by a check, straight from the
// database, that nothing changed.

// whTenantRows dumps the tenant's webhook rows, for before/after comparisons.
func whTenantRows(t *testing.T, s *apitest.Server, user apitest.User) string {
	t.Helper()
	var dump string
	require.NoError(t, s.DB.NewRaw(`SELECT coalesce((SELECT string_agg(row_to_json(w)::text, E'\n' ORDER BY w.id) FROM webhook_endpoints w WHERE w.tenant_id = ?0), '')
		|| coalesce((SELECT string_agg(row_to_json(d)::text, E'\n' ORDER BY d.id) FROM webhook_deliveries d WHERE d.tenant_id = ?0), '')
		|| coalesce((SELECT string_agg(row_to_json(e)::text, E'\n' ORDER BY e.id) FROM webhook_events e WHERE e.tenant_id = ?0), '')`,
		user.Tenant).Scan(t.Context(), &dump))
	return dump
}

func TestWebhookIsolation(t *testing.T) {
	t.Parallel()
	s := apitest.New(t)
	victim := apitest.NewTenant(t, s)
	rcv := whNewReceiver(t)
	ep, secret := whEndpoint(t, victim, rcv.srv.URL, "job.completed", "robot.online")
	var sent struct{ SendTestWebhook struct{ ID string } }
	victim.Do(t, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": ep}, &sent)
	rcv.wait(t, 1)
	apitest.Eventually(t, time.Minute, "the test delivery is recorded", func() bool {
		return whDeliveries(t, victim, ep)[0].Status == "SUCCEEDED"
	})
	victimRobot := victim.CreateRobot(t, "victim-bot", apitest.RobotOpts{})

	attacker := apitest.NewTenant(t, s)
	attackerRobot := attacker.CreateRobot(t, "attacker-bot", apitest.RobotOpts{})
	before := whTenantRows(t, s, victim.User)
	require.NotEmpty(t, before)

	ops := []struct {
		name, query string
		vars        map[string]any
	}{
		{"webhookDeliveries", `query($e: ID!) { webhookDeliveries(endpointId: $e) { edges { node { id } } } }`, map[string]any{"e": ep}},
		{"updateWebhookEndpoint", `mutation($e: ID!) { updateWebhookEndpoint(id: $e, input: {url: "https://attacker.example/x", enabled: true}) { id } }`, map[string]any{"e": ep}},
		{"deleteWebhookEndpoint", `mutation($e: ID!) { deleteWebhookEndpoint(id: $e) }`, map[string]any{"e": ep}},
		{"rotateWebhookSecret", `mutation($e: ID!) { rotateWebhookSecret(id: $e) { secret } }`, map[string]any{"e": ep}},
		{"sendTestWebhook", `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": ep}},
		{"redeliverWebhook", `mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id } }`, map[string]any{"d": sent.SendTestWebhook.ID}},
	}

	t.Run("AnotherTenantGetsNotFound", func(t *testing.T) {
		for _, op := range ops {
			resp := s.Do(t, attacker.User.Token, op.query, op.vars)
			resp.Code(t, "NOT_FOUND")
			apitest.RequireNoData(t, resp)
			require.NotContains(t, string(resp.Raw), secret, op.name)
			// Exactly as for an id that does not exist.
			missing := map[string]any{}
			for k := range op.vars {
				missing[k] = uuid.NewString()
			}
			require.Equal(t, "NOT_FOUND", s.Do(t, attacker.User.Token, op.query, missing).Code(t, "NOT_FOUND").Code(), op.name)
		}
		var out struct{ WebhookEndpoints []struct{ ID string } }
		attacker.Do(t, `{ webhookEndpoints { id } }`, nil, &out)
		require.Empty(t, out.WebhookEndpoints)
		require.Equal(t, before, whTenantRows(t, s, victim.User), "an attack changed the victim's webhooks")
	})

	t.Run("RobotsAreForbidden", func(t *testing.T) {
		all := append(ops[:len(ops):len(ops)],
			struct {
				name, query string
				vars        map[string]any
			}{"webhookEndpoints", `{ webhookEndpoints { id } }`, nil},
			struct {
				name, query string
				vars        map[string]any
			}{"createWebhookEndpoint", `mutation { createWebhookEndpoint(input: {url: "https://x.example/h", events: ["job.completed"]}) { secret } }`, nil})
		for _, key := range []string{victimRobot.Key, attackerRobot.Key} {
			for _, op := range all {
				resp := s.Do(t, key, op.query, op.vars)
				resp.Code(t, "FORBIDDEN")
				apitest.RequireNoData(t, resp)
			}
		}
		require.Equal(t, before, whTenantRows(t, s, victim.User), "a robot changed the victim's webhooks")
	})

	t.Run("NoSecretIsReadable", func(t *testing.T) {
		resp := s.Do(t, victim.User.Token, `{ webhookEndpoints { id url description events enabled disabledReason previousSecretExpiresAt failingSince createdBy createdAt updatedAt } }`, nil)
		resp.OK(t, nil)
		require.NotContains(t, string(resp.Raw), secret)
		require.NotContains(t, string(resp.Raw), strings.TrimPrefix(secret, "whsec_"))
	})

	t.Run("AnotherTenantsEventsNeverReachTheEndpoint", func(t *testing.T) {
		n := rcv.count()
		attackerRobot.Heartbeat(t, "ONLINE")
		attackerRobot.Complete(t, whRunning(t, attacker, attackerRobot, nil), nil)
		// The victim's own event is delivered after them: had the attacker's
		// been routed to the endpoint, they would have arrived first.
		victimRobot.Heartbeat(t, "ONLINE")
		got := rcv.wait(t, n+1)
		for _, q := range got[n:] {
			require.Equal(t, victimRobot.ID, q.body(t).Data["id"])
		}
		// The outbox holds only the victim's deliveries for its endpoint:
		// the test event and its robot coming online.
		var types []string
		for _, d := range whDeliveries(t, victim, ep) {
			types = append(types, d.EventType)
		}
		require.Equal(t, []string{"webhook.test", "robot.online"}, types)
	})
}
