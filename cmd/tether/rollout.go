package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/protocol"
)

// rolloutLine says where a rollout stands, in one line.
func rolloutLine(r protocol.Rollout) string {
	var parts []string
	for _, g := range r.Groups {
		s := fmt.Sprintf("%s: updated %d/%d, healthy %d, unhealthy %d", g.Name, g.Updated, g.Total, g.Healthy, g.Unhealthy)
		if g.PendingOffline > 0 {
			s += fmt.Sprintf(", pending (offline) %d", g.PendingOffline)
		}
		if g.Canaries > 0 {
			s += fmt.Sprintf(", canaries %d", g.Canaries)
			if g.Promoted {
				s += " (promoted)"
			}
		}
		parts = append(parts, s)
	}
	line := fmt.Sprintf("rollout of version %d %s", r.Version, r.State)
	if len(parts) > 0 {
		line += " — " + strings.Join(parts, "; ")
	}
	if r.Description != "" {
		line += " (" + r.Description + ")"
	}
	return line
}

func printRollout(w io.Writer, r protocol.Rollout) {
	fmt.Fprintf(w, "\nRollout of version %d: %s\n", r.Version, r.State)
	if r.Description != "" {
		fmt.Fprintf(w, "  %s\n", r.Description)
	}
	if r.RevertedTo != 0 {
		fmt.Fprintf(w, "  reverted to version %d\n", r.RevertedTo)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tTOTAL\tUPDATED\tHEALTHY\tUNHEALTHY\tPENDING(OFFLINE)\tCANARIES\tPROMOTED")
	for _, g := range r.Groups {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%v\n", g.Name, g.Total, g.Updated, g.Healthy, g.Unhealthy, g.PendingOffline, g.Canaries, g.Promoted)
	}
	tw.Flush()
}

// followRollout prints a rollout's progress until it ends or pauses. It
// returns whether the status settled the matter, and the error to exit with.
func followRollout(out, errOut io.Writer, st protocol.JobStatus, last *string) (bool, error) {
	r := st.Rollout
	if r == nil || r.Version != st.Version {
		return false, nil
	}
	if line := rolloutLine(*r); line != *last {
		fmt.Fprintln(out, line)
		*last = line
	}
	switch r.State {
	case protocol.RolloutSuccessful:
		fmt.Fprintf(out, "Rollout of version %d successful\n", r.Version)
		return true, nil
	case protocol.RolloutPaused:
		fmt.Fprintf(out, "Rollout of version %d paused: canaries are healthy; promote it with `tether job promote %s`\n", r.Version, st.Job)
		return true, nil
	case protocol.RolloutFailed:
		fmt.Fprintf(errOut, "Rollout of version %d failed: %s\n", r.Version, r.Description)
		if r.RevertedTo != 0 {
			fmt.Fprintf(errOut, "Reverting to version %d\n", r.RevertedTo)
		}
		return true, cli.ExitError{Code: 1}
	}
	return false, nil
}

func newJobPlanCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "plan FILE",
		Short: "Show what submitting a job document would do, changing nothing",
		Long: `Ask the planner what submitting a job document would do to the fleet as it
is now: allocations placed, updated in place, updated destructively (their
workload restarts), stopped, and updates a rollout would hold back, each
with its reason. Nothing is published to the job topic.

Exit status, as nomad job plan: 0 when nothing would change, 1 when
allocations would be placed, updated or stopped, 255 on an error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return planFailed(cmd, err)
			}
			job, err := protocol.ParseJob(raw)
			if err != nil {
				printFieldErrors(cmd.ErrOrStderr(), args[0], protocol.FieldErrors(err))
				return cli.ExitError{Code: 255}
			}
			payload, _ := protocol.Encode(job)
			ctx := cmd.Context()
			c, topics, err := g.connect(ctx)
			if err != nil {
				return planFailed(cmd, err)
			}
			defer c.Close()
			nonce := bus.RandomID("plan-")
			results := make(chan protocol.PlanResult, 1)
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.Subscribe(sctx, topics.PlanResult(nonce), 1, func(m bus.Message) {
				if r, err := protocol.DecodePlanResult(m.Payload); err == nil {
					select {
					case results <- r:
					default:
					}
				}
			})
			cancel()
			if err != nil {
				return planFailed(cmd, err)
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.Publish(pctx, topics.Plan(nonce), payload, false, 1)
			cancel()
			if err != nil {
				return planFailed(cmd, err)
			}
			var res protocol.PlanResult
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(timeout):
				fmt.Fprintf(cmd.ErrOrStderr(), "no answer from the planner within %s (is it running?)\n", timeout)
				return cli.ExitError{Code: 255}
			case res = <-results:
			}
			if len(res.Errors) > 0 {
				printFieldErrors(cmd.ErrOrStderr(), "planner", res.Errors)
				return cli.ExitError{Code: 255}
			}
			changes := printPlan(cmd.OutOrStdout(), res)
			if changes {
				return cli.ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the planner's answer")
	return cmd
}

// printPlan prints a dry run and reports whether anything would change.
func printPlan(w io.Writer, r protocol.PlanResult) bool {
	if r.Unchanged {
		fmt.Fprintf(w, "Job %s: the document equals version %d in force\n", r.Job, r.Version)
	} else {
		fmt.Fprintf(w, "Job %s: would become version %d\n", r.Job, r.Version)
	}
	section := func(sign, title string, as []protocol.PlannedAlloc) {
		if len(as) == 0 {
			return
		}
		fmt.Fprintf(w, "\n%s (%d)\n", title, len(as))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, a := range as {
			fmt.Fprintf(tw, "  %s %s\t%s\ton %s\t%s\n", sign, a.ID, a.Group, a.Device, a.Reason)
		}
		tw.Flush()
	}
	section("+", "Place", r.Place)
	section("+/-", "Update, destructive (the workload restarts)", r.Destructive)
	section("~", "Update in place", r.InPlace)
	section("-", "Stop", r.Stop)
	section("=", "Held back by the rollout, for now", r.Deferred)
	for _, g := range r.Groups {
		if g.Unplaced != "" {
			fmt.Fprintf(w, "\ngroup %s: %s\n", g.Name, g.Unplaced)
		}
	}
	n := len(r.Place) + len(r.Destructive) + len(r.InPlace) + len(r.Stop)
	if n == 0 {
		fmt.Fprintln(w, "\nNo allocation would change.")
	}
	return n > 0
}

// fetchHistory reads a job's retained version history.
func (g *globals) fetchHistory(ctx context.Context, c *bus.Client, topics protocol.Topics, job string) (protocol.JobHistory, error) {
	msgs, err := collect(ctx, c, topics.Base(), topics.History(job))
	if err != nil {
		return protocol.JobHistory{}, err
	}
	for _, m := range msgs {
		if len(m.Payload) == 0 {
			continue
		}
		return protocol.DecodeJobHistory(m.Payload)
	}
	return protocol.JobHistory{}, fmt.Errorf("job %s: no history (never submitted?)", job)
}

func newJobHistoryCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "history JOB",
		Short: "List a job's versions, newest first, with their rollouts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if err := protocol.ValidateID(args[0]); err != nil {
				return fmt.Errorf("job: %w", err)
			}
			c, topics, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			h, err := g.fetchHistory(cmd.Context(), c, topics, args[0])
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return cli.ExitError{Code: 1}
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				return writeJSON(out, h)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tSUBMITTED\tSTABLE\tROLLOUT\tDIGEST")
			for _, v := range h.Versions {
				rollout := "-"
				if r := v.Rollout; r != nil {
					rollout = string(r.State)
					if r.RevertedTo != 0 {
						rollout += fmt.Sprintf(" (reverted to %d)", r.RevertedTo)
					}
				}
				digest := v.Digest
				if len(digest) > 12 {
					digest = digest[:12]
				}
				fmt.Fprintf(tw, "%d\t%s\t%v\t%s\t%s\n", v.Version, v.SubmittedAt.Local().Format(time.RFC3339), v.Stable, rollout, digest)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newJobRevertCmd(g *globals) *cobra.Command {
	var detach bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "revert JOB VERSION",
		Short: "Return a job to an earlier version: its document is submitted again as a new version",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			version, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil || version == 0 {
				return fmt.Errorf("version %q: want a version number from `tether job history %s`", args[1], id)
			}
			ctx := cmd.Context()
			c, topics, statuses, err := g.followStatus(ctx, id)
			if err != nil {
				return err
			}
			defer c.Close()
			h, err := g.fetchHistory(ctx, c, topics, id)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return cli.ExitError{Code: 1}
			}
			var found *protocol.JobVersionEntry
			var have []string
			for i, v := range h.Versions {
				have = append(have, fmt.Sprint(v.Version))
				if v.Version == version {
					found = &h.Versions[i]
				}
			}
			if found == nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "job %s has no version %d in its history (have %s)\n", id, version, strings.Join(have, ", "))
				return cli.ExitError{Code: 1}
			}
			payload, err := protocol.Encode(found.Job)
			if err != nil {
				return err
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.Publish(pctx, topics.Job(id), payload, true, 1)
			cancel()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Submitted version %d of job %s again\n", version, id)
			return followRun(ctx, out, cmd.ErrOrStderr(), statuses, protocol.Digest(payload), detach, timeout)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the planner accepted the document")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to follow the job before giving up")
	return cmd
}

func newJobPromoteCmd(g *globals) *cobra.Command {
	var detach bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "promote JOB",
		Short: "Promote a rollout past its canaries and follow it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			ctx := cmd.Context()
			c, topics, statuses, err := g.followStatus(ctx, id)
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := settledStatus(ctx, c, topics, statuses)
			if err != nil {
				return err
			}
			errOut := cmd.ErrOrStderr()
			switch {
			case st == nil:
				fmt.Fprintf(errOut, "job %s not found\n", id)
				return cli.ExitError{Code: 1}
			case st.Rollout == nil || st.Rollout.Version != st.Version:
				fmt.Fprintf(errOut, "job %s has no rollout (no group has an update block)\n", id)
				return cli.ExitError{Code: 1}
			case st.Rollout.Done():
				fmt.Fprintf(errOut, "the rollout of version %d is over (%s): nothing to promote\n", st.Version, st.Rollout.State)
				return cli.ExitError{Code: 1}
			}
			canaries := false
			for _, g := range st.Rollout.Groups {
				if g.Canaries > 0 && !g.Promoted {
					canaries = true
				}
			}
			if !canaries {
				fmt.Fprintf(errOut, "the rollout of version %d has no canaries awaiting promotion\n", st.Version)
				return cli.ExitError{Code: 1}
			}
			payload, _ := protocol.Encode(protocol.Promote{Job: id, Version: st.Version})
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.Publish(pctx, topics.Promote(id), payload, false, 1)
			cancel()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Promoting version %d of job %s\n", st.Version, id)
			if detach {
				return nil
			}
			deadline := time.NewTimer(timeout)
			defer deadline.Stop()
			last := ""
			promoted := false
			for {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-deadline.C:
					fmt.Fprintf(errOut, "gave up after %s; see `tether job status %s`\n", timeout, id)
					return cli.ExitError{Code: 1}
				case s := <-statuses:
					if s.Rollout == nil || s.Rollout.Version != st.Version {
						fmt.Fprintf(errOut, "job %s moved on to version %d\n", id, s.Version)
						return cli.ExitError{Code: 1}
					}
					if s.Rollout.Done() {
						// Over before or without the promotion (a
						// canary turned unhealthy, say).
						_, err := followRollout(out, errOut, s, &last)
						return err
					}
					if !promoted {
						for _, g := range s.Rollout.Groups {
							promoted = promoted || g.Promoted
						}
						if !promoted {
							continue
						}
					}
					if s.Rollout.State == protocol.RolloutPaused {
						continue // the status from before the promotion took effect
					}
					if done, err := followRollout(out, errOut, s, &last); done {
						return err
					}
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the promotion is published")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long to follow the rollout")
	return cmd
}

func newDeviceEligibilityCmd(g *globals) *cobra.Command {
	var enable, disable bool
	cmd := &cobra.Command{
		Use:   "eligibility DEVICE (--enable | --disable)",
		Short: "Allow or forbid new placements on a device; what it runs stays",
		Long: `--disable makes a device ineligible: it gets no new allocation, and keeps
what it runs. --enable makes it eligible again, and ends a drain.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if enable == disable {
				return fmt.Errorf("want exactly one of --enable or --disable")
			}
			id := args[0]
			if !disable {
				return g.setScheduling(cmd, protocol.Scheduling{Device: id}, nil)
			}
			no := false
			return g.setScheduling(cmd, protocol.Scheduling{Device: id, Eligible: &no}, func(cur protocol.Scheduling) bool {
				if cur.Drain {
					fmt.Fprintf(cmd.OutOrStdout(), "Device %s is draining, so ineligible already; `tether device drain %s --disable` ends the drain\n", id, id)
					return false
				}
				return true
			})
		},
	}
	cmd.Flags().BoolVar(&enable, "enable", false, "the device takes new allocations (the default)")
	cmd.Flags().BoolVar(&disable, "disable", false, "the device takes no new allocation")
	return cmd
}

func newDeviceDrainCmd(g *globals) *cobra.Command {
	var disable bool
	cmd := &cobra.Command{
		Use:   "drain DEVICE",
		Short: "Move a device's service and batch allocations elsewhere, max_parallel at a time",
		Long: `Mark a device draining: it takes no new allocation, and the planner moves its
service and batch allocations to other devices, at most max_parallel of a
group at a time (all at once for groups without an update block). System
and sysbatch allocations stay. --disable ends the drain and makes the
device eligible again. Follow the moves with ` + "`tether job status`" + `.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.setScheduling(cmd, protocol.Scheduling{Device: args[0], Drain: !disable}, nil)
		},
	}
	cmd.Flags().BoolVar(&disable, "disable", false, "stop draining and make the device eligible again")
	return cmd
}

// setScheduling publishes a device's scheduling setting, retained. When
// given, proceed first sees the device's current setting (the defaults
// when it has none) and may leave it as it is.
func (g *globals) setScheduling(cmd *cobra.Command, s protocol.Scheduling, proceed func(cur protocol.Scheduling) bool) error {
	if err := protocol.ValidateID(s.Device); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	ctx := cmd.Context()
	c, topics, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if proceed != nil {
		msgs, err := collect(ctx, c, topics.Base(), topics.Scheduling(s.Device))
		if err != nil {
			return err
		}
		cur := protocol.Scheduling{Device: s.Device}
		for _, m := range msgs {
			if sc, err := protocol.DecodeScheduling(m.Payload); err == nil {
				cur = sc
			}
		}
		if !proceed(cur) {
			return nil
		}
	}
	var payload []byte // eligible and not draining: the default, so clear it
	if !s.IsEligible() {
		payload, _ = protocol.Encode(s)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.Publish(pctx, topics.Scheduling(s.Device), payload, true, 1)
	cancel()
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	switch {
	case s.Drain:
		fmt.Fprintf(out, "Device %s is draining: no new allocation, its service and batch allocations move elsewhere\n", s.Device)
	case !s.IsEligible():
		fmt.Fprintf(out, "Device %s is ineligible: no new allocation, what it runs stays\n", s.Device)
	default:
		fmt.Fprintf(out, "Device %s is eligible\n", s.Device)
	}
	return nil
}

// planFailed prints err and exits with job plan's error status, 255.
func planFailed(cmd *cobra.Command, err error) error {
	fmt.Fprintln(cmd.ErrOrStderr(), "Error:", err)
	return cli.ExitError{Code: 255}
}
