package migrations

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Trigger is a trigger the migrations create: Name on Table.
type Trigger struct {
	// Migration is the name of the migration that creates it, such as "0003".
	Migration string
	Table     string
	Name      string
}

var (
	createTriggerRE = regexp.MustCompile(`(?is)\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:CONSTRAINT\s+)?TRIGGER\s+(\w+)\s.*?\sON\s+(?:ONLY\s+)?(\w+)`)
	dropTriggerRE   = regexp.MustCompile(`(?is)\bDROP\s+TRIGGER\s+(?:IF\s+EXISTS\s+)?(\w+)\s+ON\s+(?:ONLY\s+)?(\w+)`)
	sqlCommentRE    = regexp.MustCompile(`--[^\n]*`)
)

// Triggers lists the triggers a database with exactly the applied
// migrations must have, read from the embedded .up.sql files in order: those
// created by an applied migration and not dropped by a later applied one.
// `fleetgraph verify` checks them against pg_trigger, so that a trigger
// dropped or disabled by hand (the change feed goes quiet without one) is
// reported instead of silently missed.
func Triggers(applied []string) ([]Trigger, error) {
	ms, err := embedded()
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, name := range applied {
		want[name] = true
	}
	var out []Trigger
	for _, mig := range ms.Sorted() {
		if !want[mig.Name] {
			continue
		}
		up, err := upSQL(mig.Name)
		if err != nil {
			return nil, err
		}
		for _, m := range dropTriggerRE.FindAllStringSubmatch(up, -1) {
			out = slices.DeleteFunc(out, func(t Trigger) bool {
				return strings.EqualFold(t.Name, m[1]) && strings.EqualFold(t.Table, m[2])
			})
		}
		for _, m := range createTriggerRE.FindAllStringSubmatch(up, -1) {
			out = append(out, Trigger{Migration: mig.Name, Name: strings.ToLower(m[1]), Table: strings.ToLower(m[2])})
		}
	}
	return out, nil
}

// upSQL returns the text of a migration's .up.sql file, comments removed.
func upSQL(name string) (string, error) {
	entries, err := files.ReadDir(".")
	if err != nil {
		return "", fmt.Errorf("listing embedded migrations: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name+"_") && strings.HasSuffix(e.Name(), ".up.sql") {
			b, err := files.ReadFile(e.Name())
			if err != nil {
				return "", fmt.Errorf("reading migration %s: %w", e.Name(), err)
			}
			return sqlCommentRE.ReplaceAllString(string(b), ""), nil
		}
	}
	return "", fmt.Errorf("migration %s has no .up.sql file", name)
}
