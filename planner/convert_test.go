package planner

import (
	"reflect"
	"testing"
	"testing/quick"

	"github.com/tether-edge/tether/planner/core"
)

// TestAllocRoundTrip: every field of core.Alloc survives the store, so a
// field added to the core cannot be dropped silently between plans.
func TestAllocRoundTrip(t *testing.T) {
	f := func(a core.Alloc) bool {
		b := fromStore(toStore(a))
		if len(a.Tasks) == 0 && len(b.Tasks) == 0 {
			b.Tasks = a.Tasks // nil and empty are the same here
		}
		return reflect.DeepEqual(a, b)
	}
	if err := quick.Check(f, nil); err != nil {
		t.Fatal(err)
	}
}
