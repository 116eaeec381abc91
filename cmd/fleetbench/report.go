package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/tether-edge/tether/sim"
)

// Scenario is one scenario's outcome.
type Scenario struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Wall is the scenario's headline duration (what it waits for), in
	// seconds; what it measures exactly is in Metrics.
	Wall    float64                    `json:"wall_s"`
	Metrics []Metric                   `json:"metrics"`
	Latency map[string]sim.Percentiles `json:"latency_s,omitempty"`
	// Usage of the server, mosquitto (if any) and the simulators (summed)
	// over the scenario.
	Usage map[string]ProcUsage `json:"usage"`
	Notes []string             `json:"notes,omitempty"`
}

// Metric is one named number.
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
}

func (s *Scenario) metric(name string, v float64, unit string) {
	s.Metrics = append(s.Metrics, Metric{Name: name, Value: v, Unit: unit})
}

func (s *Scenario) note(format string, args ...any) {
	s.Notes = append(s.Notes, fmt.Sprintf(format, args...))
}

func (s *Scenario) get(name string) (Metric, bool) {
	for _, m := range s.Metrics {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}

// ProcUsage is a process's CPU and memory over a window.
type ProcUsage struct {
	CPUSeconds float64 `json:"cpu_s"`
	// CPUPercent is of one core (200 is both cores of this machine).
	CPUPercent float64 `json:"cpu_percent"`
	RSSStartMB float64 `json:"rss_start_mb"`
	RSSEndMB   float64 `json:"rss_end_mb"`
	RSSPeakMB  float64 `json:"rss_peak_mb"`
}

func usageBetween(a, b usage, peakKB int64) ProcUsage {
	u := ProcUsage{CPUSeconds: b.cpu - a.cpu, RSSStartMB: mb(a.rssKB), RSSEndMB: mb(b.rssKB), RSSPeakMB: mb(max(peakKB, a.rssKB, b.rssKB))}
	if d := b.at.Sub(a.at).Seconds(); d > 0 {
		u.CPUPercent = 100 * u.CPUSeconds / d
	}
	return u
}

func mb(kb int64) float64 { return float64(kb) / 1024 }

func secs(d time.Duration) float64 { return d.Seconds() }

// headline picks what a scenario's table row shows.
var headline = map[string][]string{
	"connect": {"all_connected_s", "all_reported_s", "server_sees_all_online_s", "server_rss_per_device_kb", "server_cpu_per_device_ms"},
	"system":  {"accepted_s", "all_running_s", "server_reports_running_s"},
	"service": {"instances", "all_running_s", "devices_used", "max_per_device", "rolling_update_s", "rolling_update_starts"},
	"restart": {"server_stop_s", "server_start_s", "all_reconnected_s", "planner_answers_s", "reconverged_s", "workloads_restarted"},
	"steady":  {"server_cpu_percent", "msgs_per_device_min", "wire_kb_per_device_min", "broker_kb_per_device_min"},
}

func markdown(res *Result) string {
	var b strings.Builder
	if res.Skipped != "" {
		fmt.Fprintf(&b, "fleetbench skipped: %s\n", res.Skipped)
		return b.String()
	}
	fmt.Fprintf(&b, "\nFleet benchmark, %d devices, broker %s, %d simulator processes, %d CPUs (load at start %s), %s\n\n",
		res.Devices, res.BrokerImpl, res.Sims, res.Host.CPUs, res.Host.Load1, res.Started.Format(time.RFC3339))
	b.WriteString("| scenario | N | broker | ok | headline | latency p50/p95/p99 (s) | server CPU s (%) | server RSS MB end (peak) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, s := range res.Scenarios {
		var parts []string
		for _, name := range headline[s.Name] {
			if m, ok := s.get(name); ok {
				parts = append(parts, fmt.Sprintf("%s %s", name, format(m)))
			}
		}
		lat := ""
		for _, name := range []string{"desired_to_running", "submit_to_running"} {
			if p, ok := s.Latency[name]; ok && p.Count > 0 {
				lat += fmt.Sprintf("%s %.2f/%.2f/%.2f ", strings.ReplaceAll(name, "_", " "), p.P50, p.P95, p.P99)
			}
		}
		ok := "yes"
		if !s.OK {
			first, _, _ := strings.Cut(s.Error, "\n")
			ok = "NO: " + strings.ReplaceAll(first, "|", "/")
		}
		srv := s.Usage["server"]
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %.1f (%.0f%%) | %.0f (%.0f) |\n",
			s.Name, res.Devices, res.BrokerImpl, ok, strings.Join(parts, "; "), strings.TrimSpace(lat),
			srv.CPUSeconds, srv.CPUPercent, srv.RSSEndMB, srv.RSSPeakMB)
	}
	return b.String()
}

func format(m Metric) string {
	switch {
	case m.Value == float64(int64(m.Value)) && m.Unit == "":
		return fmt.Sprintf("%d", int64(m.Value))
	case m.Unit == "s":
		return fmt.Sprintf("%.1fs", m.Value)
	default:
		return fmt.Sprintf("%.3g%s", m.Value, unitSuffix(m.Unit))
	}
}

func unitSuffix(u string) string {
	if u == "" {
		return ""
	}
	return " " + u
}
