package e2e

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWebhookSignatures has the Standard Webhooks reference library (npm
// standardwebhooks, in webhook_receiver.mjs) verify real deliveries: a test
// event and a job's completion, signed with a rotated endpoint's new and
// previous secrets, and refused with a secret that is not the endpoint's.
func TestWebhookSignatures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s, tok := b.server, b.user.Token

	var created struct {
		CreateWebhookEndpoint struct {
			Endpoint struct{ ID string }
			Secret   string
		}
	}
	s.Do(t, tok, `mutation { createWebhookEndpoint(input: {url: "http://127.0.0.1:9/unused", events: ["job.completed"]}) { endpoint { id } secret } }`, nil).OK(t, &created)
	ep, old := created.CreateWebhookEndpoint.Endpoint.ID, created.CreateWebhookEndpoint.Secret
	var rotated struct{ RotateWebhookSecret struct{ Secret string } }
	s.Do(t, tok, `mutation($e: ID!) { rotateWebhookSecret(id: $e) { secret } }`, map[string]any{"e": ep}).OK(t, &rotated)
	fresh := rotated.RotateWebhookSecret.Secret
	wrong := "whsec_" + base64.StdEncoding.EncodeToString([]byte("not the endpoint's secret!"))

	rcv := runScript(b.ctx, t, "webhook_receiver.mjs", map[string]string{"WEBHOOK_SECRETS": strings.Join([]string{fresh, old, wrong}, ",")})
	var url string
	rcv.wait(b.ctx, t, "the receiver listens", func(l line) bool {
		var v struct{ Listening string }
		if json.Unmarshal([]byte(l.Raw), &v) != nil {
			return false
		}
		url = v.Listening
		return url != ""
	})
	s.Do(t, tok, `mutation($e: ID!, $u: String!) { updateWebhookEndpoint(id: $e, input: {url: $u}) { id } }`, map[string]any{"e": ep, "u": url}).OK(t, nil)

	s.Do(t, tok, `mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }`, map[string]any{"e": ep}).OK(t, nil)
	var wf struct{ CreateWorkflow struct{ ID string } }
	s.Do(t, tok, `mutation { createWorkflow(input: {name: "w", definition: {nodes: []}}) { id } }`, nil).OK(t, &wf)
	var robot struct{ CreateRobot struct{ ID string } }
	s.Do(t, tok, `mutation { createRobot(input: {name: "r"}) { id } }`, nil).OK(t, &robot)
	var key struct{ CreateApiKey struct{ Key string } }
	s.Do(t, tok, `mutation($r: ID!) { createApiKey(robotId: $r, name: "k") { key } }`, map[string]any{"r": robot.CreateRobot.ID}).OK(t, &key)
	var job struct{ EnqueueJob struct{ ID string } }
	s.Do(t, tok, `mutation($w: ID!) { enqueueJob(input: {workflowId: $w, input: {n: 1}}) { id } }`, map[string]any{"w": wf.CreateWorkflow.ID}).OK(t, &job)
	var lease struct{ ClaimJob struct{ LeaseToken string } }
	s.Do(t, key.CreateApiKey.Key, `mutation { claimJob { leaseToken } }`, nil).OK(t, &lease)
	fence := map[string]any{"j": job.EnqueueJob.ID, "l": lease.ClaimJob.LeaseToken}
	s.Do(t, key.CreateApiKey.Key, `mutation($j: ID!, $l: ID!) { startJob(jobId: $j, leaseToken: $l) { id } }`, fence).OK(t, nil)
	s.Do(t, key.CreateApiKey.Key, `mutation($j: ID!, $l: ID!) { completeJob(jobId: $j, leaseToken: $l, result: {ok: true}) { id } }`, fence).OK(t, nil)

	type delivery struct {
		ID        string
		Signature string
		Verified  map[string]any
		Payload   struct {
			Type string
			Data map[string]any
		}
	}
	got := map[string]delivery{}
	for len(got) < 2 {
		l := rcv.wait(b.ctx, t, "a verified delivery", func(l line) bool {
			return strings.HasPrefix(l.Raw, `{"webhook"`)
		})
		var v struct{ Webhook delivery }
		require.NoError(t, json.Unmarshal([]byte(l.Raw), &v))
		got[v.Webhook.Payload.Type] = v.Webhook
	}
	for typ, d := range got {
		require.Equal(t, true, d.Verified[fresh], "%s: the new secret's signature: %v", typ, d.Verified[fresh])
		require.Equal(t, true, d.Verified[old], "%s: the previous secret's signature: %v", typ, d.Verified[old])
		require.NotEqual(t, true, d.Verified[wrong], "%s: verified with a wrong secret", typ)
		require.Len(t, strings.Fields(d.Signature), 2)
	}
	require.Equal(t, ep, got["webhook.test"].Payload.Data["endpointId"])
	done := got["job.completed"].Payload.Data
	require.Equal(t, job.EnqueueJob.ID, done["id"])
	require.Equal(t, "COMPLETED", done["status"])
	require.Equal(t, map[string]any{"ok": true}, done["result"])
	require.Equal(t, map[string]any{"n": float64(1)}, done["input"])
}
