package migrations_test

import (
	"os"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"fleetgraph/dbtest"
)

// Migration 0022 turns the host-only zone names stored before the names
// were checked (posix/X, right/X) into X, and leaves every other name,
// localtime included (the host's own zone, which it cannot tell), as it is.
func TestHostOnlyZoneNamesBecomeIANANames(t *testing.T) {
	t.Parallel()
	d := dbtest.New(t)
	ctx := t.Context()
	tenant := uuid.New()
	var workflow uuid.UUID
	require.NoError(t, d.NewRaw(`INSERT INTO workflows (tenant_id, name) VALUES (?, 'w') RETURNING id`, tenant).Scan(ctx, &workflow))
	zones := map[string]string{
		"posix/Europe/Paris": "Europe/Paris", "right/UTC": "UTC", "right/America/Argentina/Salta": "America/Argentina/Salta",
		"Europe/Paris": "Europe/Paris", "localtime": "localtime", "posixrules": "posixrules", "UTC": "UTC",
	}
	for zone := range zones {
		_, err := d.ExecContext(ctx, `INSERT INTO schedules (tenant_id, name, workflow_id, cron_expression, time_zone, created_by)
			VALUES (?, ?, ?, '0 9 * * *', ?, 'test')`, tenant, "s "+zone, workflow, zone)
		require.NoError(t, err)
	}
	up, err := os.ReadFile("0022_schedule_zone_names.tx.up.sql")
	require.NoError(t, err)
	_, err = d.ExecContext(ctx, string(up))
	require.NoError(t, err)
	var rows []struct{ Name, TimeZone string }
	require.NoError(t, d.NewRaw(`SELECT name, time_zone FROM schedules WHERE tenant_id = ?`, tenant).Scan(ctx, &rows))
	require.Len(t, rows, len(zones))
	for _, r := range rows {
		require.Equal(t, zones[r.Name[2:]], r.TimeZone, r.Name)
	}
}
