package core

import (
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// rescheduleAt is when the delay has passed and the policy allows another
// attempt; from then on the policy allows it at every later time.
func TestRescheduleAt(t *testing.T) {
	t.Parallel()
	failed := t0
	ago := func(d time.Duration) time.Time { return t0.Add(-d) }
	limited := protocol.ReschedulePolicy{Attempts: 2, Interval: time.Hour, Delay: 10 * time.Second, MaxDelay: time.Hour}
	doubling := protocol.ReschedulePolicy{Unlimited: true, Interval: time.Hour, Delay: 30 * time.Second, Exponential: true, MaxDelay: time.Minute}
	for _, c := range []struct {
		name    string
		pol     protocol.ReschedulePolicy
		earlier []time.Time
		want    time.Time
	}{
		{"first", limited, nil, t0.Add(10 * time.Second)},
		{"one earlier", limited, []time.Time{ago(time.Minute)}, t0.Add(10 * time.Second)},
		{"used up: the older leaves the window", limited, []time.Time{ago(50 * time.Minute), ago(time.Minute)}, t0.Add(10 * time.Minute)},
		{"used up long ago", limited, []time.Time{ago(3 * time.Hour), ago(2 * time.Hour)}, t0.Add(10 * time.Second)},
		{"unsorted history", limited, []time.Time{ago(time.Minute), ago(50 * time.Minute)}, t0.Add(10 * time.Minute)},
		{"doubling", doubling, []time.Time{ago(time.Hour)}, t0.Add(time.Minute)},
		{"capped", doubling, []time.Time{ago(3 * time.Hour), ago(2 * time.Hour), ago(time.Hour)}, t0.Add(time.Minute)},
	} {
		got := rescheduleAt(c.pol, c.earlier, failed)
		if !got.Equal(c.want) {
			t.Errorf("%s: got t0%+v, want t0%+v", c.name, got.Sub(t0), c.want.Sub(t0))
		}
		if !c.pol.Allows(c.earlier, got) || !c.pol.Allows(c.earlier, got.Add(time.Hour)) {
			t.Errorf("%s: the policy does not allow an attempt at t0%+v", c.name, got.Sub(t0))
		}
		if before := got.Add(-time.Nanosecond); before.Sub(failed) >= c.pol.DelayAfter(len(c.earlier)) && c.pol.Allows(c.earlier, before) {
			t.Errorf("%s: an attempt was already possible before t0%+v", c.name, got.Sub(t0))
		}
	}
}
