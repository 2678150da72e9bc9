package db

import (
	"reflect"

	"github.com/google/uuid"
	"github.com/uptrace/bun/schema"
)

// models are the tables' row types, whose UUID columns fastUUIDScans
// speeds up (a test checks that every `bun:"table:..."` struct is here).
var models = []any{
	(*APIKey)(nil), (*APIKeyAuditEntry)(nil), (*Job)(nil), (*RobotLog)(nil),
	(*RobotHeartbeat)(nil), (*Machine)(nil), (*MachineEvent)(nil), (*Deployment)(nil),
	(*Robot)(nil), (*Schedule)(nil), (*WebhookEndpoint)(nil), (*WebhookDelivery)(nil),
	(*Workflow)(nil), (*WorkflowVersion)(nil), (*WorkflowAssignment)(nil), (*NodeRobotOverride)(nil),
}

var uuidType = reflect.TypeFor[uuid.UUID]()

// fastUUIDScans makes bun scan the UUID columns of d's models without an
// allocation: lib/pq hands a UUID over as its 36 bytes of text, and bun
// scans it with uuid.UUID.Scan, which copies them into a string to parse
// it, a second allocation for every key of every row (lib/pq's boxing of
// the bytes is the first). Anything but 36 bytes goes to bun's scanner as
// before.
func fastUUIDScans(d schema.Dialect) {
	for _, m := range models {
		for _, f := range d.Tables().Get(reflect.TypeOf(m).Elem()).Fields {
			switch f.StructField.Type {
			case uuidType:
				f.Scan = scanUUIDText(f.Scan)
			case reflect.PointerTo(uuidType):
				f.Scan = schema.PtrScanner(scanUUIDText(schema.Scanner(uuidType)))
			}
		}
	}
}

// scanUUIDText parses a UUID's text into dest, a uuid.UUID, and leaves
// anything else to next.
func scanUUIDText(next schema.ScannerFunc) schema.ScannerFunc {
	return func(dest reflect.Value, src any) error {
		b, ok := src.([]byte)
		if !ok || len(b) != 36 || !dest.CanAddr() {
			return next(dest, src)
		}
		u, err := uuid.ParseBytes(b)
		if err != nil {
			return next(dest, src) // its error, as before
		}
		*dest.Addr().Interface().(*uuid.UUID) = u
		return nil
	}
}
