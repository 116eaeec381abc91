package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/sim"
)

const (
	sysJobID = "fleet-sys"
	svcJobID = "fleet-svc"
)

// systemJob runs one long-lived workload on every device.
func systemJob() protocol.Job {
	return protocol.Job{ID: sysJobID, Type: protocol.JobSystem, Groups: []protocol.Group{{
		Name: "agent",
		Tasks: []protocol.Task{{Name: "run", Driver: protocol.DriverPodman,
			Config:    protocol.TaskConfig{Image: "localhost/busybox:latest", Command: []string{"sleep", "infinity"}},
			Resources: protocol.Resources{CPU: 10, Memory: 8}}},
	}}}
}

// serviceJob asks for count instances, in groups of at most
// protocol.MaxCount, kept off riscv64 devices and spread over sites, each
// rolled out 10 % of the group at a time. version goes into the tasks'
// environment: changing it is a rolling update.
func serviceJob(count int, version string) protocol.Job {
	j := protocol.Job{ID: svcJobID, Type: protocol.JobService}
	for g := 0; count > 0; g++ {
		c := min(count, protocol.MaxCount)
		count -= c
		j.Groups = append(j.Groups, protocol.Group{
			Name:        fmt.Sprintf("g%d", g),
			Count:       &c,
			Constraints: []protocol.Constraint{{Attribute: "${device.arch}", Operator: protocol.OpNotEqual, Value: "riscv64"}},
			Spreads:     []protocol.Spread{{Attribute: "${device.labels.site}"}},
			Update: &protocol.Update{
				MaxParallel:      max(1, c/10),
				MinHealthyTime:   protocol.Duration(time.Second),
				HealthyDeadline:  protocol.Duration(time.Minute),
				ProgressDeadline: protocol.Duration(10 * time.Minute),
			},
			Tasks: []protocol.Task{{Name: "w", Driver: protocol.DriverPodman,
				Config:    protocol.TaskConfig{Image: "localhost/busybox:latest", Command: []string{"sleep", "infinity"}},
				Env:       map[string]string{"VERSION": version},
				Resources: protocol.Resources{CPU: 50, Memory: 32}}},
		})
	}
	return j
}

// connect: the simulators start, every device connects and publishes
// birth, facts and an empty report; the server sees them all online.
func (b *bench) connect(ctx context.Context, s *Scenario) error {
	n := b.o.devices
	idle := sample(b.server.pid())
	var idleMosq usage
	if b.mosq != nil {
		idleMosq = sample(b.mosq.pid())
	}
	begin := time.Now()
	if err := b.startSims(ctx); err != nil {
		return err
	}
	var allConnected, allReported, serverOnline time.Duration
	planless := b.o.brokerImpl == "broker-only" // no planner, no fleet summary
	var cpuDone usage
	wall, err := b.waitFor(ctx, "connect", b.o.timeout, func(ctx context.Context) (bool, string, error) {
		st, err := b.status(ctx)
		if err != nil {
			return false, "", err
		}
		online := 0
		if fs, _ := b.fleetSummary(); fs != nil {
			online = fs.Devices.Online
		}
		now := time.Since(begin)
		if allConnected == 0 && st.Connected == n {
			allConnected = now
		}
		if allReported == 0 && st.Reported == n {
			allReported = now
		}
		if serverOnline == 0 && (online == n || planless) {
			serverOnline = now
		}
		line := fmt.Sprintf("started %d/%d  connected %d  reported %d  server sees online %d  failed %d",
			st.Started, n, st.Connected, st.Reported, online, st.Failed)
		if st.Failed > 0 {
			return false, line, fmt.Errorf("%d simulated devices failed to start (see the simulator logs)", st.Failed)
		}
		return allConnected > 0 && allReported > 0 && serverOnline > 0, line, nil
	})
	cpuDone = sample(b.server.pid())
	s.Wall = secs(wall)
	if err != nil {
		return err
	}
	s.metric("all_connected_s", secs(allConnected), "s")
	s.metric("all_reported_s", secs(allReported), "s")
	if planless {
		s.note("broker-only: the server process is the embedded broker alone (package broker, configured as tether server configures it), without the planner; tether server's memory per device minus this is the planner's")
	} else {
		s.metric("server_sees_all_online_s", secs(serverOnline), "s")
	}
	s.metric("server_cpu_per_device_ms", 1000*(cpuDone.cpu-idle.cpu)/float64(n), "ms")
	// Memory once the storm has passed.
	b.logf("connect: settling 10s before measuring memory")
	sleep(ctx, 10*time.Second)
	settled := sample(b.server.pid())
	s.metric("server_rss_idle_mb", round(mb(idle.rssKB), 1), "MB")
	s.metric("server_rss_connected_mb", round(mb(settled.rssKB), 1), "MB")
	s.metric("server_rss_per_device_kb", round(float64(settled.rssKB-idle.rssKB)/float64(n), 1), "KB")
	s.metric("server_anon_per_device_kb", round(float64(settled.anonKB-idle.anonKB)/float64(n), 1), "KB")
	s.note("server_anon_per_device_kb counts anonymous memory only (Go heap and stacks); RSS also holds the pages of the bbolt files the server maps")
	if b.mosq != nil {
		m := sample(b.mosq.pid())
		s.metric("mosquitto_rss_per_device_kb", round(float64(m.rssKB-idleMosq.rssKB)/float64(n), 2), "KB")
		s.metric("mosquitto_anon_per_device_kb", round(float64(m.anonKB-idleMosq.anonKB)/float64(n), 2), "KB")
		s.note("mosquitto mode: the server process is the planner alone, so its memory per device is the planner's; mosquitto's is the broker's")
	}
	var simRSS int64
	for name, pid := range b.pids() {
		if name != "server" && name != "mosquitto" {
			simRSS += sample(pid).rssKB
		}
	}
	s.metric("sim_rss_per_device_kb", round(float64(simRSS)/float64(n), 1), "KB")
	return nil
}

// system: a system job to every device, from `tether job run` to every
// device reporting it running.
func (b *bench) system(ctx context.Context, s *Scenario) error {
	n := b.o.devices
	t0 := time.Now()
	ver, took, err := b.submit(ctx, systemJob())
	if err != nil {
		return err
	}
	s.metric("accepted_s", secs(took), "s")
	wall, err := b.waitFor(ctx, "system", b.o.timeout, func(ctx context.Context) (bool, string, error) {
		st, err := b.status(ctx)
		if err != nil {
			return false, "", err
		}
		j := st.Jobs[sysJobID]
		return j.RunningByVersion[ver] == n, fmt.Sprintf("desired received %d  running %d/%d  starts %d", st.DesiredReceived, j.RunningByVersion[ver], n, st.WorkloadStarts), nil
	})
	all := time.Since(t0)
	s.Wall = secs(all)
	if err != nil {
		return err
	}
	_ = wall
	s.metric("all_running_s", secs(all), "s")
	b.sysJob = true
	// The server's view catches up through reports.
	_, err = b.waitFor(ctx, "system (server view)", b.o.timeout, func(context.Context) (bool, string, error) {
		fs, _ := b.fleetSummary()
		j, _ := jobBrief(fs, sysJobID)
		return j.Version == ver && j.Counts.Running == n, fmt.Sprintf("server counts running %d/%d (version %d)", j.Counts.Running, n, j.Version), nil
	})
	if err != nil {
		return err
	}
	s.metric("server_reports_running_s", secs(time.Since(t0)), "s")
	return b.latencies(ctx, s, sysJobID, ver, t0)
}

// latencies collects the per-device timings of a job version.
func (b *bench) latencies(ctx context.Context, s *Scenario, job string, ver uint64, t0 time.Time) error {
	devs, err := b.devices(ctx, job, ver)
	if err != nil {
		return err
	}
	var toRun, fromSubmit, toDesired []time.Duration
	for _, d := range devs {
		if d.DesiredAt == 0 || d.RunningAt == 0 {
			continue
		}
		toRun = append(toRun, time.Duration(d.RunningAt-d.DesiredAt))
		fromSubmit = append(fromSubmit, time.Duration(d.RunningAt-t0.UnixNano()))
		toDesired = append(toDesired, time.Duration(d.DesiredAt-t0.UnixNano()))
	}
	s.Latency = map[string]sim.Percentiles{
		"desired_to_running": spread(toRun),
		"submit_to_running":  spread(fromSubmit),
		"submit_to_desired":  spread(toDesired),
	}
	return nil
}

// service: 10 × N instances bin-packed over the fleet, then a rolling
// update of all of them.
func (b *bench) service(ctx context.Context, s *Scenario) error {
	n := b.o.devices
	count := 10 * n
	s.metric("instances", float64(count), "")
	t0 := time.Now()
	ver, took, err := b.submit(ctx, serviceJob(count, "1"))
	if err != nil {
		return err
	}
	s.metric("accepted_s", secs(took), "s")
	progress := func(ver uint64) func(context.Context) (bool, string, error) {
		return func(ctx context.Context) (bool, string, error) {
			st, err := b.status(ctx)
			if err != nil {
				return false, "", err
			}
			j := st.Jobs[svcJobID]
			fs, _ := b.fleetSummary()
			brief, _ := jobBrief(fs, svcJobID)
			return j.RunningByVersion[ver] == count && j.Allocs == count,
				fmt.Sprintf("version %d running %d/%d  allocations %d on %d devices  server: placed %d running %d",
					ver, j.RunningByVersion[ver], count, j.Allocs, j.Devices, brief.Counts.Placed, brief.Counts.Running), nil
		}
	}
	if _, err := b.waitFor(ctx, "service", b.o.timeout, progress(ver)); err != nil {
		s.Wall = secs(time.Since(t0))
		return err
	}
	all := time.Since(t0)
	s.Wall = secs(all)
	s.metric("all_running_s", secs(all), "s")
	b.svcJob, b.svcInstances = true, count
	if err := b.latencies(ctx, s, svcJobID, ver, t0); err != nil {
		return err
	}
	devs, err := b.devices(ctx, svcJobID, ver)
	if err != nil {
		return err
	}
	used, most := 0, 0
	for _, d := range devs {
		if d.Allocs > 0 {
			used++
			most = max(most, d.Allocs)
		}
	}
	s.metric("devices_used", float64(used), "")
	s.metric("max_per_device", float64(most), "")
	if used > 0 {
		s.metric("mean_per_used_device", round(float64(count)/float64(used), 2), "")
	}

	// The rolling update: a new environment for every instance.
	st0, err := b.status(ctx)
	if err != nil {
		return err
	}
	t1 := time.Now()
	ver2, _, err := b.submit(ctx, serviceJob(count, "2"))
	if err != nil {
		return err
	}
	if _, err := b.waitFor(ctx, "rolling update", b.o.timeout, progress(ver2)); err != nil {
		return err
	}
	s.metric("rolling_update_s", secs(time.Since(t1)), "s")
	st1, err := b.status(ctx)
	if err != nil {
		return err
	}
	s.metric("rolling_update_starts", float64(st1.WorkloadStarts-st0.WorkloadStarts), "")
	s.note("service job: %d groups of at most %d (protocol.MaxCount), constraint arch != riscv64, spread over site, update max_parallel 10%% of a group, min_healthy_time 1s",
		len(serviceJob(count, "1").Groups), protocol.MaxCount)
	return nil
}

// restart: the server stops and starts again under the connected fleet.
// Every device must reconnect, report again, and not restart a workload.
func (b *bench) restart(ctx context.Context, s *Scenario) error {
	n := b.o.devices
	before, err := b.devices(ctx, "", 0)
	if err != nil {
		return err
	}
	prev := map[string]sim.DeviceStatus{}
	starts := 0
	for _, d := range before {
		prev[d.ID] = d
		starts += d.Starts
	}
	s.metric("workloads_before", float64(starts), "")
	external := b.o.brokerImpl != "embedded"
	withBroker := external && b.o.restartMosq
	tKill := time.Now()
	if err := b.server.stop(2 * time.Minute); err != nil {
		return err
	}
	if withBroker {
		if err := b.mosq.stop(2 * time.Minute); err != nil {
			return err
		}
	}
	stopped := time.Now()
	s.metric("server_stop_s", secs(stopped.Sub(tKill)), "s")
	if withBroker {
		_, port, _ := strings.Cut(strings.TrimPrefix(b.brokerURL, "mqtt://"), ":")
		p, _ := strconv.Atoi(port)
		if err := b.runMosquitto(ctx, p); err != nil {
			return err
		}
	}
	if err := b.startServer(ctx); err != nil {
		return err
	}
	ready := time.Now()
	s.metric("server_start_s", secs(ready.Sub(stopped)), "s")
	var allReconnected time.Duration
	switch {
	case withBroker:
		s.note("external broker: Mosquitto (persistence on) and the planner both restart, as the embedded broker restarts with the server; server_stop_s and server_start_s cover both")
		external = false // the devices reconnect: wait for them as with the embedded broker
	case external:
		s.note("external broker: only the planner restarts; devices stay connected to the broker")
	default:
		s.note("edged waits a random 0-5s before each reconnect (bus ReconnectJitter) on top of paho's retry interval, which bounds all_reconnected_s from below at small N")
	}
	wall, err := b.waitFor(ctx, "restart", b.o.timeout, func(ctx context.Context) (bool, string, error) {
		devs, err := b.devices(ctx, "", 0)
		if err != nil {
			return false, "", err
		}
		reconnected, connected, reported := 0, 0, 0
		for _, d := range devs {
			if d.Connects > prev[d.ID].Connects {
				reconnected++
			}
			if d.Connected {
				connected++
			}
			if d.LastReport > tKill.UnixNano() {
				reported++
			}
		}
		if allReconnected == 0 && reconnected == n {
			allReconnected = time.Since(tKill)
		}
		line := fmt.Sprintf("reconnected %d  connected %d  reported again %d  of %d", reconnected, connected, reported, n)
		if external {
			return connected == n, line, nil
		}
		return reconnected == n && connected == n && reported == n, line, nil
	})
	_ = wall
	if err != nil {
		return err
	}
	if !external {
		s.metric("all_reconnected_s", secs(allReconnected), "s")
	}
	devicesBack := time.Since(tKill)
	s.metric("devices_reconverged_s", secs(devicesBack), "s")
	// The server's view. The planner handles its messages in order, so
	// its answer to a plan request sent now proves it has taken in every
	// presence and report the devices sent before; and the answer for the
	// running system job must be "no change". The planner publishes the
	// fleet summary only when it changes, so the last one (retained or
	// new) then says what it knows.
	b.logf("restart: asking the restarted planner for a plan of %s", sysJobID)
	code, out, err := b.plan(ctx, systemJob())
	if err != nil {
		return err
	}
	s.metric("planner_answers_s", secs(time.Since(tKill)), "s")
	if code != 0 {
		s.note("after the restart the planner would change the running %s (tether job plan exit %d): %s", sysJobID, code, firstLines(out, 5))
	}
	_, err = b.waitFor(ctx, "restart (server view)", b.o.timeout, func(context.Context) (bool, string, error) {
		fs, _ := b.fleetSummary()
		if fs == nil {
			return false, "no fleet summary", nil
		}
		sys, _ := jobBrief(fs, sysJobID)
		ok := fs.Devices.Online == n && (!b.sysJob || sys.Counts.Running == n)
		line := fmt.Sprintf("server sees online %d, %s running %d", fs.Devices.Online, sysJobID, sys.Counts.Running)
		if b.svcJob {
			svc, _ := jobBrief(fs, svcJobID)
			ok = ok && svc.Counts.Running == b.svcInstances
			line += fmt.Sprintf(", %s running %d/%d", svcJobID, svc.Counts.Running, b.svcInstances)
		}
		return ok, line, nil
	})
	if err != nil {
		return err
	}
	total := time.Since(tKill)
	s.Wall = secs(total)
	s.metric("reconverged_s", secs(total), "s")
	s.note("reconverged_s: from SIGTERM to the server until every device reconnected and reported again, the restarted planner answered a plan request (so took in everything sent before it), and its fleet summary shows every device online and every job running")

	after, err := b.devices(ctx, "", 0)
	if err != nil {
		return err
	}
	restarted, devicesRestarted := 0, 0
	for _, d := range after {
		if diff := d.Starts - prev[d.ID].Starts; diff != 0 {
			restarted += diff
			devicesRestarted++
		}
	}
	s.metric("workloads_restarted", float64(restarted), "")
	s.metric("devices_that_restarted_a_workload", float64(devicesRestarted), "")
	if restarted != 0 {
		return fmt.Errorf("%d workloads on %d devices were started again across the server restart", restarted, devicesRestarted)
	}
	return nil
}

// steadyState: the fleet idles, running its jobs, for --steady.
func (b *bench) steadyState(ctx context.Context, s *Scenario) error {
	n := float64(b.o.devices)
	st0, err := b.status(ctx)
	if err != nil {
		return err
	}
	a := time.Now()
	srv0 := sample(b.server.pid())
	end := a.Add(b.o.steady)
	for time.Now().Before(end) {
		sleep(ctx, min(10*time.Second, time.Until(end)))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		u := sample(b.server.pid())
		st, err := b.status(ctx)
		if err != nil {
			return err
		}
		b.logf("steady: %5.0fs of %s  connected %d  running %d  server cpu %.1f%% rss %.0fMB",
			time.Since(a).Seconds(), b.o.steady, st.Connected, st.Running, 100*(u.cpu-srv0.cpu)/time.Since(a).Seconds(), mb(u.rssKB))
	}
	st1, err := b.status(ctx)
	if err != nil {
		return err
	}
	z := time.Now()
	srv1 := sample(b.server.pid())
	d := z.Sub(a)
	s.Wall = secs(d)
	minutes := d.Minutes()
	per := func(v int64) float64 { return float64(v) / n / minutes }
	t0, t1 := st0.Traffic, st1.Traffic
	s.metric("server_cpu_percent", round(100*(srv1.cpu-srv0.cpu)/d.Seconds(), 2), "%")
	s.metric("server_rss_mb", round(mb(srv1.rssKB), 1), "MB")
	s.metric("msgs_per_device_min", round(per(t1.MsgsSent+t1.MsgsReceived-t0.MsgsSent-t0.MsgsReceived), 3), "")
	s.metric("msgs_sent_per_device_min", round(per(t1.MsgsSent-t0.MsgsSent), 3), "")
	s.metric("msgs_received_per_device_min", round(per(t1.MsgsReceived-t0.MsgsReceived), 3), "")
	s.metric("payload_bytes_per_device_min", round(per(t1.BytesSent+t1.BytesReceived-t0.BytesSent-t0.BytesReceived), 1), "B")
	s.metric("wire_kb_per_device_min", round(per(t1.WireBytesSent+t1.WireBytesReceived-t0.WireBytesSent-t0.WireBytesReceived)/1024, 3), "KB")
	// An idle MQTT client pings once per keepalive: PINGREQ and PINGRESP,
	// 2 bytes each.
	s.metric("keepalive_bytes_per_device_min", round(4*time.Minute.Seconds()/b.o.keepalive.Seconds(), 1), "B")
	s.metric("reconnects", float64(st1.Connects-st0.Connects), "")
	s.metric("workload_starts", float64(st1.WorkloadStarts-st0.WorkloadStarts), "")
	s.note("device traffic is counted at the simulated devices: PUBLISHes they sent and received with their payloads; wire bytes add MQTT framing and PUBACKs; keepalive pings are estimated apart (keepalive_bytes_per_device_min)")
	rr, span, ok1 := b.sysRate("bytes_received", a, z)
	rs, _, ok2 := b.sysRate("bytes_sent", a, z)
	if ok1 && ok2 {
		s.metric("broker_kb_per_device_min", round((rr+rs)*60/n/1024, 3), "KB")
		if mr, _, ok := b.sysRate("msgs_received", a, z); ok {
			ms, _, _ := b.sysRate("msgs_sent", a, z)
			s.metric("broker_msgs_per_device_min", round((mr+ms)*60/n, 3), "")
		}
		s.note("broker_* are the broker's own $SYS byte and message counters (all clients, the planner's included, pings included) over %.0fs of the window", span.Seconds())
	} else {
		s.note("broker $SYS counters: fewer than two samples 30s apart in the window (mochi publishes them every 60s): run --steady 2m or longer")
	}
	if heap, at, ok := b.sysLatest("heap"); ok && at.After(a) {
		s.metric("broker_reported_heap_mb", round(heap/(1<<20), 1), "MB")
		s.note("broker_reported_heap_mb is the broker's own $SYS memory figure (mochi: the whole server process's Go HeapInuse; Mosquitto: its heap)")
	}
	return nil
}
