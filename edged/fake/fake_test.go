package fake_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/driver/drivertest"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/protocol"
)

func newFake(t *testing.T, opts fake.Options) *fake.Driver {
	opts.Log = zerolog.New(zerolog.NewTestWriter(t))
	return fake.New(opts)
}

func TestContract(t *testing.T) {
	t.Parallel()
	broken := protocol.Task{Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Command: []string{"/nonexistent"}}}
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		return newFake(t, fake.Options{StartError: func(s driver.Spec) error {
			if s.Task.Config.Command[0] == "/nonexistent" {
				return errors.New("executable file not found")
			}
			return nil
		}})
	}, drivertest.Options{
		Long:   protocol.Task{Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Image: "busybox", Command: []string{"sleep", "3600"}}},
		Exit3:  protocol.Task{Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Image: "busybox", Command: []string{"sh", "-c", "sleep 0.1; exit $CODE"}}, Env: map[string]string{"CODE": "3"}},
		Broken: &broken,
		Reopen: func(_ *testing.T, d driver.Driver) driver.Driver { return d.(*fake.Driver).Reopen() },
	})
}

func spec(name string, cmd ...string) driver.Spec {
	return driver.Spec{
		Name:   name,
		Labels: map[string]string{driver.LabelAlloc: "a-" + name, driver.LabelDevice: "dev"},
		Task:   protocol.Task{Name: name, Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Command: cmd}},
	}
}

func TestKillAndInstances(t *testing.T) {
	t.Parallel()
	d := newFake(t, fake.Options{Name: protocol.DriverExec})
	if d.Name() != protocol.DriverExec {
		t.Errorf("Name = %q", d.Name())
	}
	ctx := context.Background()
	a, err := d.Start(ctx, spec("a", "sleep", "infinity"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, spec("a", "sleep", "infinity")); err == nil {
		t.Errorf("second Start with the same name succeeded")
	}
	ch, _ := d.Watch(ctx)
	if err := d.Kill("a", 139); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Errorf("Kill did not signal watchers")
	}
	got := d.Instances()
	if len(got) != 1 || got[0].ID != a.ID || got[0].State != driver.StateExited || got[0].ExitCode != 139 {
		t.Errorf("Instances = %+v, want a exited 139", got)
	}
	if err := d.Kill("nobody", 1); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Kill(nobody) = %v, want ErrNotFound", err)
	}
	// Instances hands out copies.
	got[0].Labels["x"] = "y"
	if _, ok := d.Instances()[0].Labels["x"]; ok {
		t.Errorf("Instances shares its label maps")
	}
}

func TestBehavior(t *testing.T) {
	t.Parallel()
	d := newFake(t, fake.Options{Behavior: func(s driver.Spec) fake.Outcome {
		if s.Name == "batch" {
			return fake.Outcome{Exits: true, After: 10 * time.Millisecond, Code: 0}
		}
		return fake.Forever
	}})
	ctx := context.Background()
	batch, _ := d.Start(ctx, spec("batch", "anything"))
	svc, _ := d.Start(ctx, spec("svc", "exit", "1"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, _ := d.List(ctx, "dev")
		if len(list) == 2 && list[0].ID == batch.ID && list[0].State == driver.StateExited {
			if list[0].ExitCode != 0 {
				t.Errorf("batch exit code %d, want 0", list[0].ExitCode)
			}
			if list[1].ID != svc.ID || list[1].State != driver.StateRunning {
				t.Errorf("svc = %+v, want running (Behavior overrides the command)", list[1])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch never exited: %+v", list)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchClosesWithContext(t *testing.T) {
	t.Parallel()
	d := newFake(t, fake.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	ch, _ := d.Watch(ctx)
	cancel()
	select {
	case _, open := <-ch:
		if open {
			// A pending signal is allowed; the close must follow.
			if _, open := <-ch; open {
				t.Errorf("second receive got a value, want closed")
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("channel not closed after ctx ended")
	}
}

func TestShellBehavior(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd  []string
		env  map[string]string
		want fake.Outcome
	}{
		{nil, nil, fake.Forever},
		{[]string{"sleep", "3600"}, nil, fake.Outcome{Exits: true, After: time.Hour}},
		{[]string{"/bin/sleep", "infinity"}, nil, fake.Forever},
		{[]string{"sh", "-c", "exit 3"}, nil, fake.Outcome{Exits: true, Code: 3}},
		{[]string{"/bin/sh", "-c", "sleep 0.5; exit $CODE"}, map[string]string{"CODE": "7"}, fake.Outcome{Exits: true, After: 500 * time.Millisecond, Code: 7}},
		{[]string{"sh", "-c", "sleep 1s && false"}, nil, fake.Outcome{Exits: true, After: time.Second, Code: 1}},
		{[]string{"sh", "-c", "false; exit"}, nil, fake.Outcome{Exits: true, Code: 1}},
		{[]string{"httpd", "-f", "-p", "8080"}, nil, fake.Forever},
		{[]string{"sh", "-c", "sleep 1; httpd -f"}, nil, fake.Forever},
		{[]string{"exit", "256"}, nil, fake.Outcome{Exits: true, Code: 0}},
	} {
		got := fake.ShellBehavior(driver.Spec{Task: protocol.Task{Config: protocol.TaskConfig{Command: tc.cmd}, Env: tc.env}})
		if got != tc.want {
			t.Errorf("ShellBehavior(%q) = %+v, want %+v", tc.cmd, got, tc.want)
		}
	}
}

func TestStartLatency(t *testing.T) {
	t.Parallel()
	d := newFake(t, fake.Options{StartLatency: 50 * time.Millisecond})
	begin := time.Now()
	if _, err := d.Start(context.Background(), spec("slow", "sleep", "infinity")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < 50*time.Millisecond {
		t.Errorf("Start took %s, want at least the 50ms latency", took)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Start(ctx, spec("never", "sleep", "infinity")); !errors.Is(err, context.Canceled) {
		t.Errorf("Start with an ended context: %v, want context.Canceled", err)
	}
	if n := len(d.Instances()); n != 1 {
		t.Errorf("%d instances, want 1: a cancelled start creates nothing", n)
	}
}

func TestCrashing(t *testing.T) {
	t.Parallel()
	forever := spec("f", "sleep", "infinity")
	exits := spec("e", "sh", "-c", "exit 3")
	always := fake.Crashing(nil, 1, 10*time.Millisecond, []int{42})
	if o := always(forever); !o.Exits || o.Code != 42 || o.After <= 0 || o.After > 10*time.Millisecond {
		t.Errorf("rate 1: %+v, want an exit with 42 within 10ms", o)
	}
	if o := always(exits); o.Code != 3 || o.After != 0 {
		t.Errorf("an instance that exits by itself: %+v, want its own exit 3", o)
	}
	if o := fake.Crashing(nil, 0, 0, nil)(forever); o.Exits {
		t.Errorf("rate 0: %+v, want it to run forever", o)
	}
	half := fake.Crashing(nil, 0.5, 0, nil)
	crashed := 0
	for range 1000 {
		if half(forever).Exits {
			crashed++
		}
	}
	if crashed < 350 || crashed > 650 {
		t.Errorf("rate 0.5: %d of 1000 crashed", crashed)
	}
}
