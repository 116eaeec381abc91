package protocol

import (
	"math"
	"time"
)

// Reschedule is a group's reschedule policy, after Nomad's reschedule
// block: what the planner does with an allocation of a service or batch
// job that failed (a task failed and edged will not restart it any more).
// The allocation is replaced, after a delay, on another device where one is
// feasible (the same device only when no other is); Attempts replacements
// within Interval at most, unless Unlimited.
//
// Without the block, service groups reschedule with the defaults below and
// batch groups do not (a batch job that failed stays failed, as before).
type Reschedule struct {
	// Attempts is how many replacements Interval may hold; 0 with
	// Unlimited false means never reschedule.
	Attempts int `json:"attempts,omitempty"`
	// Interval is the window Attempts counts in; 0 means
	// DefaultRescheduleInterval.
	Interval Duration `json:"interval,omitempty"`
	// Delay is the wait before the first replacement; 0 means
	// DefaultRescheduleDelay.
	Delay Duration `json:"delay,omitempty"`
	// DelayFunction is "exponential" (the default: the delay doubles with
	// each replacement in a row) or "constant".
	DelayFunction string `json:"delay_function,omitempty"`
	// MaxDelay caps the delay; 0 means DefaultRescheduleMaxDelay.
	MaxDelay Duration `json:"max_delay,omitempty"`
	// Unlimited reschedules without counting attempts.
	Unlimited bool `json:"unlimited,omitempty"`
}

// Reschedule defaults (Nomad's for service jobs).
const (
	DefaultRescheduleInterval = time.Hour
	DefaultRescheduleDelay    = 30 * time.Second
	DefaultRescheduleMaxDelay = time.Hour
)

// Values of Reschedule.DelayFunction.
const (
	DelayExponential = "exponential"
	DelayConstant    = "constant"
)

// ReschedulePolicy is a reschedule block with every default applied.
type ReschedulePolicy struct {
	Attempts    int
	Interval    time.Duration
	Delay       time.Duration
	Exponential bool
	MaxDelay    time.Duration
	Unlimited   bool
}

// ReschedulePolicy returns the group's policy for a job of type t, and
// false when failed allocations are not rescheduled: system and sysbatch
// allocations (bound to their device), batch groups without the block, and
// blocks that allow no attempt.
func (g Group) ReschedulePolicy(t JobType) (ReschedulePolicy, bool) {
	if t.OnEveryDevice() {
		return ReschedulePolicy{}, false
	}
	r := g.Reschedule
	if r == nil {
		if t != JobService {
			return ReschedulePolicy{}, false
		}
		return ReschedulePolicy{Interval: DefaultRescheduleInterval, Delay: DefaultRescheduleDelay, Exponential: true, MaxDelay: DefaultRescheduleMaxDelay, Unlimited: true}, true
	}
	p := ReschedulePolicy{Attempts: r.Attempts, Interval: DefaultRescheduleInterval, Delay: DefaultRescheduleDelay,
		Exponential: r.DelayFunction != DelayConstant, MaxDelay: DefaultRescheduleMaxDelay, Unlimited: r.Unlimited}
	if r.Interval > 0 {
		p.Interval = r.Interval.Std()
	}
	if r.Delay > 0 {
		p.Delay = r.Delay.Std()
	}
	if r.MaxDelay > 0 {
		p.MaxDelay = r.MaxDelay.Std()
	}
	if !p.Unlimited && p.Attempts == 0 {
		return ReschedulePolicy{}, false
	}
	return p, true
}

// DelayAfter is the wait before the next replacement of an allocation that
// was already replaced previous times in a row.
func (p ReschedulePolicy) DelayAfter(previous int) time.Duration {
	d := p.Delay
	if p.Exponential && previous > 0 {
		f := math.Pow(2, float64(min(previous, 62)))
		if float64(d)*f >= float64(p.MaxDelay) {
			return p.MaxDelay
		}
		d = time.Duration(float64(d) * f)
	}
	return min(d, p.MaxDelay)
}

// Allows reports whether another replacement may happen at now, given the
// times of the earlier ones.
func (p ReschedulePolicy) Allows(earlier []time.Time, now time.Time) bool {
	if p.Unlimited {
		return true
	}
	n := 0
	for _, t := range earlier {
		if now.Sub(t) < p.Interval {
			n++
		}
	}
	return n < p.Attempts
}

func validateReschedule(rp string, r Reschedule, t JobType) []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	if t.OnEveryDevice() {
		add(rp, "not used by %s jobs, whose allocations are bound to their device", t)
		return errs
	}
	if r.Attempts < 0 {
		add(rp+".attempts", "want 0 or more, got %d", r.Attempts)
	}
	if r.Unlimited && r.Attempts > 0 {
		add(rp+".attempts", "not used with unlimited: true")
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"interval", r.Interval}, {"delay", r.Delay}, {"max_delay", r.MaxDelay}} {
		if d.v < 0 {
			add(rp+"."+d.name, "want a positive duration, got %s", d.v.Std())
		}
	}
	switch r.DelayFunction {
	case "", DelayExponential, DelayConstant:
	default:
		add(rp+".delay_function", "unknown function %q, want exponential or constant", r.DelayFunction)
	}
	if r.Delay > 0 && r.MaxDelay > 0 && r.MaxDelay < r.Delay {
		add(rp+".max_delay", "want at least delay (%s), got %s", r.Delay.Std(), r.MaxDelay.Std())
	}
	return errs
}
