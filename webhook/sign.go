// Package webhook delivers the webhook outbox: it signs each event per the
// Standard Webhooks spec, sends it over an HTTP client that refuses
// private addresses, and runs the sends on a bounded pool of workers as a
// maintenance task, recording every attempt through the webhook store.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Body is what a delivery posts: the event's type, when it happened, and
// its data (the job or robot as the API shows it).
type Body struct {
	Type      string          `json:"type"`
	Timestamp string          `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// EncodeBody returns the JSON body of an event.
func EncodeBody(typ string, at time.Time, data json.RawMessage) ([]byte, error) {
	b, err := json.Marshal(Body{Type: typ, Timestamp: at.UTC().Format(time.RFC3339Nano), Data: data})
	if err != nil {
		return nil, fmt.Errorf("encoding the webhook body: %w", err)
	}
	return b, nil
}

// Sign returns the webhook-signature header of a message: for each secret
// (whsec_ and base64 of the key), "v1," and the base64 of the HMAC-SHA256
// of "id.timestamp.body", separated by spaces.
func Sign(secrets []string, id string, timestamp time.Time, body []byte) (string, error) {
	signed := id + "." + strconv.FormatInt(timestamp.Unix(), 10) + "."
	sigs := make([]string, 0, len(secrets))
	for _, s := range secrets {
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, "whsec_"))
		if err != nil {
			return "", fmt.Errorf("decoding a webhook secret: %w", err)
		}
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(signed))
		mac.Write(body)
		sigs = append(sigs, "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	return strings.Join(sigs, " "), nil
}
