package core

import (
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// Edge cases of the disconnect policy that the scenarios in
// testdata/disconnect.txt and testdata/reconcile.txt do not reach. Every
// plan is checked against the invariants and for a fixpoint.

// offlineFor marks a device offline since d before t0.
func offlineFor(d time.Duration) devOpt {
	return func(dv *Device) { dv.Presence, dv.OfflineSince = protocol.Offline, t0.Add(-d) }
}

// withStart records the device's report of an allocation as running, its
// task started at the given time (nil: unknown).
func withStart(a Alloc, at *time.Time) devOpt {
	return func(d *Device) {
		if d.Reported == nil {
			d.Reported = map[string]protocol.AllocStatus{}
		}
		d.Reported[a.ID] = protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: protocol.AllocRunning,
			Tasks: []protocol.TaskStatus{{Name: a.Tasks[0].Name, State: protocol.TaskRunning, StartedAt: at}}}
	}
}

func replacing(a, orig Alloc) Alloc {
	a.Replaces = orig.ID
	return a
}

func policy(dp protocol.Disconnect) groupOpt {
	return func(g *protocol.Group) { g.Disconnect = &dp }
}

func TestDisconnectEdgeCases(t *testing.T) {
	t.Parallel()
	keepOriginal := policy(protocol.Disconnect{Reconcile: protocol.ReconcileKeepOriginal})
	longest := policy(protocol.Disconnect{Reconcile: protocol.ReconcileLongestRunning})
	web := job("web", groups(group("g", keepOriginal)))
	o, r := allocOf(web, "g", 0, "a"), allocOf(web, "g", 0, "b")
	hourAgo, minuteAgo := t0.Add(-time.Hour), t0.Add(-time.Minute)
	tests := []struct {
		name   string
		snap   Snapshot
		want   outcome
		groups map[string][]protocol.GroupStatus // checked when not nil
	}{
		{
			// a went offline again before the planner saw it back (so its
			// allocation is disconnected, not lost). The replacement does
			// not fit next to what was kept before it, so the original is
			// no longer replaced by anything: an ordinary disconnected
			// allocation again, counted.
			name: "replacement gone, original merely disconnected",
			snap: func() Snapshot {
				big := job("big", groups(group("g", tasks(task("t", protocol.DriverPodman, 3950, 64)))))
				return Snapshot{Jobs: []Job{big, web}, Devices: []Device{dev("a", offlineFor(time.Minute)), dev("b")},
					Allocations: []Alloc{allocOf(big, "g", 0, "b"), o, replacing(r, o)}}
			}(),
			want:   outcome{Keep: "web.g.0@a big.g.0@b", Stop: "web.g.0@b"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 1, 1, "")}},
		},
		{
			// The replacement loses to an unrelated allocation of its slot
			// (by keep_original): the original it named, no longer
			// replaced by anything, stops beside the survivor.
			name: "replacement loses to a third, original stops",
			snap: Snapshot{Jobs: []Job{web}, Devices: []Device{dev("a", offlineFor(time.Minute)), dev("b"), dev("c")},
				Allocations: []Alloc{o, replacing(r, o), allocOf(web, "g", 0, "c")}},
			want: outcome{Keep: "web.g.0@c", Stop: "web.g.0@a web.g.0@b"},
		},
		{
			// A new version arrives as a returns: both are stale, the
			// original is preferred (keep_original) and updated, the
			// replacement stops.
			name: "both stale on return",
			snap: func() Snapshot {
				v2 := job("web", version(2), groups(group("g", keepOriginal, tasks(task("t", protocol.DriverPodman, 200, 64)))))
				return Snapshot{Jobs: []Job{v2}, Devices: []Device{dev("a"), dev("b")}, Allocations: []Alloc{o, replacing(r, o)}}
			}(),
			want: outcome{Update: "web.g.0@a", Stop: "web.g.0@b"},
		},
		{
			// The preferred original no longer fits its device (another
			// job took the room while it was away): the replacement
			// stays, its mark cleared.
			name: "preferred original does not fit",
			snap: func() Snapshot {
				big := job("big", groups(group("g", tasks(task("t", protocol.DriverPodman, 3950, 64)))))
				return Snapshot{Jobs: []Job{big, web}, Devices: []Device{dev("a"), dev("b")},
					Allocations: []Alloc{allocOf(big, "g", 0, "a"), o, replacing(r, o)}}
			}(),
			want: outcome{Keep: "big.g.0@a", Update: "web.g.0@b", Stop: "web.g.0@a"},
		},
		{
			// A lost allocation whose own demand no longer fits (here a
			// GPU another allocation holds) stops; its slot is placed.
			name: "lost allocation that no longer fits stops",
			snap: func() Snapshot {
				gpu := withDevices(task("t", protocol.DriverPodman, 100, 64), "nvidia/gpu", 1)
				cam := job("cam", groups(group("g", tasks(gpu))))
				first := job("a-first", groups(group("g", tasks(gpu))))
				return Snapshot{Jobs: []Job{first, cam},
					Devices:     []Device{dev("a", offlineFor(time.Hour), withResources("nvidia/gpu", 1)), dev("b", withResources("nvidia/gpu", 2))},
					Allocations: []Alloc{allocOf(first, "g", 0, "a"), allocOf(cam, "g", 0, "a")}}
			}(),
			want: outcome{Keep: "a-first.g.0@a", Place: "a-first.g.0@b cam.g.0@b", Stop: "cam.g.0@a"},
		},
		{
			// A batch allocation that finished an older version on a lost
			// device is not re-run there: the new version runs elsewhere.
			name: "finished older version on a lost device",
			snap: func() Snapshot {
				v1 := job("etl", typ(protocol.JobBatch))
				done := allocOf(v1, "g", 0, "a")
				v2 := job("etl", typ(protocol.JobBatch), version(2), groups(group("g", tasks(task("t", protocol.DriverPodman, 200, 64)))))
				return Snapshot{Jobs: []Job{v2}, Devices: []Device{dev("a", offlineFor(time.Hour), withReport(done, protocol.AllocComplete)), dev("b")},
					Allocations: []Alloc{done}}
			}(),
			want: outcome{Place: "etl.g.0@b", Stop: "etl.g.0@a"},
		},
		{
			// A complete batch allocation on a lost device is done: kept,
			// counted, never replaced, neither lost nor disconnected.
			name: "complete on a lost device",
			snap: func() Snapshot {
				etl := job("etl", typ(protocol.JobBatch))
				done := allocOf(etl, "g", 0, "a")
				return Snapshot{Jobs: []Job{etl}, Devices: []Device{dev("a", offlineFor(time.Hour), withReport(done, protocol.AllocComplete)), dev("b")},
					Allocations: []Alloc{done}}
			}(),
			want:   outcome{Keep: "etl.g.0@a"},
			groups: map[string][]protocol.GroupStatus{"etl": {status("g", 1, 1, "")}},
		},
		{
			// On return, a failed original loses to a running replacement,
			// whatever the strategy.
			name: "failed original loses",
			snap: Snapshot{Jobs: []Job{web}, Devices: []Device{dev("a", withReport(o, protocol.AllocFailed)), dev("b", withReport(r, protocol.AllocRunning))},
				Allocations: []Alloc{o, replacing(r, o)}},
			want: outcome{Update: "web.g.0@b", Stop: "web.g.0@a"},
		},
		{
			name: "longest_running: equal starts keep the original",
			snap: func() Snapshot {
				j := job("web", groups(group("g", longest)))
				o, r := allocOf(j, "g", 0, "a"), allocOf(j, "g", 0, "b")
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a", withStart(o, &hourAgo)), dev("b", withStart(r, &hourAgo))},
					Allocations: []Alloc{o, replacing(r, o)}}
			}(),
			want: outcome{Keep: "web.g.0@a", Stop: "web.g.0@b"},
		},
		{
			name: "longest_running: older replacement wins",
			snap: func() Snapshot {
				j := job("web", groups(group("g", longest)))
				o, r := allocOf(j, "g", 0, "a"), allocOf(j, "g", 0, "b")
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a", withStart(o, &minuteAgo)), dev("b", withStart(r, &hourAgo))},
					Allocations: []Alloc{o, replacing(r, o)}}
			}(),
			want: outcome{Update: "web.g.0@b", Stop: "web.g.0@a"},
		},
		{
			name: "longest_running: neither known keeps the original",
			snap: func() Snapshot {
				j := job("web", groups(group("g", longest)))
				o, r := allocOf(j, "g", 0, "a"), allocOf(j, "g", 0, "b")
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a", withStart(o, nil)), dev("b")},
					Allocations: []Alloc{o, replacing(r, o)}}
			}(),
			want: outcome{Keep: "web.g.0@a", Stop: "web.g.0@b"},
		},
		{
			// Marks on allocations of a system job (bound to their device,
			// never replaced) name nothing of their slot: cleared.
			name: "stray mark cleared",
			snap: func() Snapshot {
				j := job("agent", typ(protocol.JobSystem))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a"), dev("b")},
					Allocations: []Alloc{allocOf(j, "g", 0, "a"), replacing(allocOf(j, "g", 0, "b"), allocOf(j, "g", 0, "a"))}}
			}(),
			want: outcome{Keep: "agent.g.0@a", Update: "agent.g.0@b"},
		},
	}
	// The original's device came back and went offline again before any
	// plan: nothing is reconciled until it is online, whichever of the two
	// ids sorts first.
	for _, pair := range [][2]string{{"a", "b"}, {"b", "a"}} {
		o, r := allocOf(web, "g", 0, pair[0]), allocOf(web, "g", 0, pair[1])
		tests = append(tests, struct {
			name   string
			snap   Snapshot
			want   outcome
			groups map[string][]protocol.GroupStatus
		}{
			name: "original offline again on " + pair[0],
			snap: Snapshot{Jobs: []Job{web}, Devices: []Device{dev(pair[0], offlineFor(time.Minute)), dev(pair[1])},
				Allocations: []Alloc{o, replacing(r, o)}},
			want:   outcome{Keep: "web.g.0@a web.g.0@b"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 1, 1, "")}},
		})
	}
	for _, tt := range tests {
		p := Compute(tt.snap, t0)
		if got := outcomeOf(p); got != tt.want {
			t.Errorf("%s:\n got  %+v\n want %+v", tt.name, got, tt.want)
		}
		for id, want := range tt.groups {
			if got := p.Groups[id]; len(got) != len(want) || got[0] != want[0] {
				t.Errorf("%s: groups of %s = %+v, want %+v", tt.name, id, got, want)
			}
		}
		if err := invariantViolation(tt.snap, p); err != "" {
			t.Errorf("%s: %s", tt.name, err)
		}
		again := Compute(feedBack(tt.snap, p), t0)
		if o := outcomeOf(again); o.Place != "" || o.Update != "" || o.Stop != "" {
			t.Errorf("%s: feeding the plan back changed it: %+v", tt.name, o)
		}
	}
}

// NextEval is the earliest time an allocation of the plan becomes lost,
// over every group's lost_after; Lost and LostByJob say what is lost now.
func TestNextEval(t *testing.T) {
	t.Parallel()
	short := job("short", groups(group("g", policy(protocol.Disconnect{LostAfter: protocol.Duration(time.Minute)}))))
	long := job("long", groups(group("g", count(2), policy(protocol.Disconnect{LostAfter: protocol.Duration(time.Hour), Replace: new(false)}))))
	plain := job("plain")
	s := Snapshot{
		Jobs:        []Job{short, long, plain},
		Devices:     []Device{dev("a", offlineFor(2*time.Minute)), dev("b", offlineFor(10*time.Second)), dev("c"), dev("x", neverSeen)},
		Allocations: []Alloc{allocOf(short, "g", 0, "a"), allocOf(long, "g", 0, "a"), allocOf(plain, "g", 0, "b"), allocOf(long, "g", 1, "x")},
	}
	p := Compute(s, t0)
	// short on a is lost (1m < 2m) and replaced on c; long on a is due in
	// 58m, plain on b in 4m50s; x's offline time is unknown: never lost.
	if want := t0.Add(5*time.Minute - 10*time.Second); !p.NextEval.Equal(want) {
		t.Errorf("NextEval = %s, want %s", p.NextEval, want)
	}
	if got := shorts(p.Lost); got != "short.g.0@a" || p.LostByJob["short"] != 1 || len(p.LostByJob) != 1 {
		t.Errorf("lost %s, by job %v", got, p.LostByJob)
	}
	if got := shorts(p.Disconnected); got != "long.g.0@a plain.g.0@b long.g.1@x" {
		t.Errorf("disconnected %s", got)
	}
	if got := shorts(p.Place); got != "short.g.0@c" || p.Place[0].Replaces != allocOf(short, "g", 0, "a").ID {
		t.Errorf("placed %s", got)
	}
	// At NextEval plain is lost and replaced, and the next is long's.
	q := Compute(feedBack(s, p), p.NextEval)
	if got := shorts(q.Place); got != "plain.g.0@c" {
		t.Errorf("at NextEval placed %s", got)
	}
	if want := t0.Add(58 * time.Minute); !q.NextEval.Equal(want) {
		t.Errorf("then NextEval = %s, want %s", q.NextEval, want)
	}
	// Online devices are never lost, whatever their OfflineSince says.
	s.Devices = []Device{dev("a"), dev("b"), dev("c"), dev("x")}
	s.Devices[0].OfflineSince = t0.Add(-time.Hour)
	if p := Compute(s, t0); !p.NextEval.IsZero() || p.Lost != nil || p.Disconnected != nil || p.LostByJob != nil {
		t.Errorf("online fleet: next eval %s, lost %s, disconnected %s", p.NextEval, shorts(p.Lost), shorts(p.Disconnected))
	}
}
