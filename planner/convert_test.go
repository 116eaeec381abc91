package planner

import (
	"math/rand"
	"reflect"
	"testing"
	"testing/quick"
	"time"

	"github.com/tether-edge/tether/planner/core"
)

// TestAllocRoundTrip: every field of core.Alloc survives the store, so a
// field added to the core cannot be dropped silently between plans.
func TestAllocRoundTrip(t *testing.T) {
	f := func(in anyAlloc) bool {
		a := in.Alloc
		b := fromStore(toStore(a))
		if len(a.Tasks) == 0 && len(b.Tasks) == 0 {
			b.Tasks = a.Tasks // nil and empty are the same here
		}
		if len(a.Reschedules) == 0 && len(b.Reschedules) == 0 {
			b.Reschedules = a.Reschedules
		}
		return reflect.DeepEqual(a, b)
	}
	if err := quick.Check(f, nil); err != nil {
		t.Fatal(err)
	}
}

// anyAlloc is a core.Alloc with every field random; testing/quick cannot
// make a time.Time (unexported fields), so time slices are made here.
type anyAlloc struct{ core.Alloc }

func (anyAlloc) Generate(r *rand.Rand, size int) reflect.Value {
	var a core.Alloc
	v := reflect.ValueOf(&a).Elem()
	timesType := reflect.TypeFor[[]time.Time]()
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Type() == timesType {
			ts := make([]time.Time, r.Intn(size+1))
			for k := range ts {
				ts[k] = time.Unix(r.Int63n(1<<33), r.Int63n(1e9)).UTC()
			}
			f.Set(reflect.ValueOf(ts))
			continue
		}
		x, ok := quick.Value(f.Type(), r)
		if !ok {
			panic("cannot generate " + f.Type().String())
		}
		f.Set(x)
	}
	return reflect.ValueOf(anyAlloc{a})
}
