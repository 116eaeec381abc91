package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/protocol"
)

func newJobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "job", Short: "Run, inspect and stop jobs"}
	cmd.AddCommand(newJobRunCmd(g), newJobStatusCmd(g), newJobStopCmd(g), newJobPlanCmd(g), newJobHistoryCmd(g), newJobRevertCmd(g), newJobPromoteCmd(g))
	return cmd
}

func newJobRunCmd(g *globals) *cobra.Command {
	var detach bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "run FILE",
		Short: "Submit a job document (YAML or JSON) and follow it until it runs",
		Long: `Validate a job document, publish it retained to its job topic, and show
the placement's progress until every allocation runs (or completes, for
batch jobs) or fails. An invalid document is reported with every error and
its field path, and nothing is published.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			job, err := protocol.ParseJob(raw)
			if err != nil {
				printFieldErrors(cmd.ErrOrStderr(), args[0], protocol.FieldErrors(err))
				return cli.ExitError{Code: 1}
			}
			payload, err := protocol.Encode(job)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, topics, statuses, err := g.followStatus(ctx, job.ID)
			if err != nil {
				return err
			}
			defer c.Close()
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.Publish(pctx, topics.Job(job.ID), payload, true, 1)
			cancel()
			if err != nil {
				return err
			}
			digest := protocol.Digest(payload)
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Submitted job %s (%s)\n", job.ID, job.Type)
			return followRun(ctx, out, cmd.ErrOrStderr(), statuses, digest, detach, timeout)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the planner accepted the job")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to follow the job before giving up")
	return cmd
}

// followStatus checks a job id, connects and subscribes to the job's
// status; every status that arrives (the retained one first) goes to the
// returned channel.
// settledStatus waits for a barrier round trip on a client that follows a
// job's status (followStatus) and returns the newest status delivered
// before it: the job's current status, nil when it has none.
func settledStatus(ctx context.Context, c *bus.Client, topics protocol.Topics, statuses <-chan protocol.JobStatus) (*protocol.JobStatus, error) {
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := c.Barrier(bctx, topics.Base())
	cancel()
	if err != nil {
		return nil, err
	}
	var st *protocol.JobStatus
	for len(statuses) > 0 {
		s := <-statuses
		st = &s
	}
	return st, nil
}

func (g *globals) followStatus(ctx context.Context, job string) (*bus.Client, protocol.Topics, <-chan protocol.JobStatus, error) {
	if err := protocol.ValidateID(job); err != nil {
		return nil, protocol.Topics{}, nil, fmt.Errorf("job: %w", err)
	}
	c, topics, err := g.connect(ctx)
	if err != nil {
		return nil, topics, nil, err
	}
	statuses := make(chan protocol.JobStatus, 64)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = c.Subscribe(sctx, topics.JobStatus(job), 1, func(m bus.Message) {
		if st, err := protocol.DecodeJobStatus(m.Payload); err == nil {
			statuses <- st
		}
	})
	if err != nil {
		c.Close()
		return nil, topics, nil, err
	}
	return c, topics, statuses, nil
}

func printFieldErrors(w io.Writer, source string, errs []protocol.FieldError) {
	fmt.Fprintf(w, "%s: invalid job document (%d problem(s)):\n", source, len(errs))
	for _, e := range errs {
		fmt.Fprintf(w, "  %s\n", e.Error())
	}
}

// followRun prints progress from job statuses until the job runs or fails.
func followRun(ctx context.Context, out, errOut io.Writer, statuses <-chan protocol.JobStatus, digest string, detach bool, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	accepted := false
	var version uint64
	last := ""
	for {
		var st protocol.JobStatus
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			fmt.Fprintf(errOut, "gave up after %s; the job stays submitted (see `tether job status`)\n", timeout)
			return cli.ExitError{Code: 1}
		case st = <-statuses:
		}
		if !accepted {
			if st.Submission != digest {
				continue // a status about an earlier submission
			}
			if len(st.Errors) > 0 {
				printFieldErrors(errOut, "planner", st.Errors)
				return cli.ExitError{Code: 1}
			}
			accepted = true
			version = st.Version
			fmt.Fprintf(out, "Accepted as version %d\n", st.Version)
			if detach {
				return nil
			}
		}
		if st.Version != version && st.State != protocol.JobStopped {
			fmt.Fprintf(errOut, "Job %s moved on to version %d, submitted since; follow it with `tether job status %s -w`\n", st.Job, st.Version, st.Job)
			return cli.ExitError{Code: 1}
		}
		if done, err := followRollout(out, errOut, st, &last); done {
			return err
		} else if st.Rollout != nil && st.Rollout.Version == st.Version && !st.Rollout.Done() {
			continue // the rollout is under way: its line says more
		}
		line := progressLine(st)
		if line != last {
			fmt.Fprintln(out, line)
			last = line
		}
		for _, gs := range st.Groups {
			if gs.Unplaced != "" {
				fmt.Fprintf(errOut, "group %s: %s\n", gs.Name, gs.Unplaced)
			}
		}
		switch st.State {
		case protocol.JobRunning, protocol.JobComplete:
			if st.Type.RunsToCompletion() && st.State != protocol.JobComplete && st.Counts.Placed > 0 {
				continue // a batch job is done when it completed
			}
			if st.Counts.Placed == 0 {
				fmt.Fprintf(out, "Job %s is accepted, but no device is feasible yet: it will run on devices that become feasible\n", st.Job)
				return nil
			}
			fmt.Fprintf(out, "Job %s is %s\n", st.Job, st.State)
			return nil
		case protocol.JobDegraded:
			for _, a := range st.Allocs {
				if a.State == protocol.AllocFailed {
					fmt.Fprintf(errOut, "allocation %s on %s failed: %s\n", a.ID, a.Device, a.Message)
				}
			}
			if st.Counts.Failed == 0 {
				fmt.Fprintf(errOut, "Job %s is accepted as version %d, but not every instance can be placed (see above); it will be placed when devices allow\n", st.Job, st.Version)
			} else {
				fmt.Fprintf(errOut, "Job %s is degraded\n", st.Job)
			}
			return cli.ExitError{Code: 1}
		case protocol.JobStopped:
			fmt.Fprintf(errOut, "Job %s was stopped\n", st.Job)
			return cli.ExitError{Code: 1}
		}
	}
}

func progressLine(st protocol.JobStatus) string {
	c := st.Counts
	return fmt.Sprintf("version %d: %s, placed %d/%d, running %d, pending %d, complete %d, failed %d",
		st.Version, st.State, c.Placed, c.Desired, c.Running, c.Pending, c.Complete, c.Failed)
}

func newJobStatusCmd(g *globals) *cobra.Command {
	var output string
	var watch bool
	cmd := &cobra.Command{
		Use:   "status [JOB]",
		Short: "Show every job, or one job with its allocations",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "" && output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if watch {
				if len(args) != 1 {
					return fmt.Errorf("--watch follows one job: name it")
				}
				return watchJob(cmd, g, args[0])
			}
			if len(args) == 1 {
				if err := protocol.ValidateID(args[0]); err != nil {
					return fmt.Errorf("job: %w", err)
				}
			}
			c, topics, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			filter := topics.JobStatusFilter()
			if len(args) == 1 {
				filter = topics.JobStatus(args[0])
			}
			msgs, err := collect(cmd.Context(), c, topics.Base(), filter)
			if err != nil {
				return err
			}
			var all []protocol.JobStatus
			for _, m := range msgs {
				if len(m.Payload) == 0 {
					continue
				}
				if st, err := protocol.DecodeJobStatus(m.Payload); err == nil {
					all = append(all, st)
				}
			}
			sort.Slice(all, func(i, j int) bool { return all[i].Job < all[j].Job })
			out := cmd.OutOrStdout()
			if len(args) == 1 {
				if len(all) == 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "job %s not found\n", args[0])
					return cli.ExitError{Code: 1}
				}
				if output == "json" {
					return writeJSON(out, all[0])
				}
				printJobDetail(out, all[0])
				return nil
			}
			if output == "json" {
				if all == nil {
					all = []protocol.JobStatus{}
				}
				return writeJSON(out, all)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tTYPE\tVERSION\tSTATE\tDESIRED\tRUNNING\tPENDING\tCOMPLETE\tFAILED")
			for _, st := range all {
				c := st.Counts
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\n", st.Job, st.Type, st.Version, st.State, c.Desired, c.Running, c.Pending, c.Complete, c.Failed)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "follow the job: a line per change of its placement or rollout, until interrupted")
	return cmd
}

// watchJob prints a job's detail, then a line per change, until the
// command's context ends.
func watchJob(cmd *cobra.Command, g *globals, id string) error {
	ctx := cmd.Context()
	c, _, statuses, err := g.followStatus(ctx, id)
	if err != nil {
		return err
	}
	defer c.Close()
	out := cmd.OutOrStdout()
	first := true
	last := ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case st := <-statuses:
			if first {
				printJobDetail(out, st)
				fmt.Fprintln(out)
				first = false
			}
			line := progressLine(st)
			if r := st.Rollout; r != nil {
				line += "; " + rolloutLine(*r)
			}
			if line != last {
				fmt.Fprintf(out, "%s %s\n", time.Now().Format("15:04:05"), line)
				last = line
			}
		}
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printJobDetail(w io.Writer, st protocol.JobStatus) {
	fmt.Fprintf(w, "Job:      %s\n", st.Job)
	fmt.Fprintf(w, "Type:     %s\n", st.Type)
	fmt.Fprintf(w, "Version:  %d\n", st.Version)
	fmt.Fprintf(w, "State:    %s\n", st.State)
	if !st.UpdatedAt.IsZero() {
		fmt.Fprintf(w, "Updated:  %s\n", st.UpdatedAt.Local().Format(time.RFC3339))
	}
	if len(st.Errors) > 0 {
		fmt.Fprintln(w, "\nLast submission was rejected:")
		for _, e := range st.Errors {
			fmt.Fprintf(w, "  %s\n", e.Error())
		}
	}
	if len(st.Groups) > 0 {
		fmt.Fprintln(w, "\nGroups")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tDESIRED\tPLACED\tUNPLACED")
		for _, g := range st.Groups {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", g.Name, g.Desired, g.Placed, g.Unplaced)
		}
		tw.Flush()
	}
	if st.Rollout != nil {
		printRollout(w, *st.Rollout)
	}
	if len(st.Allocs) > 0 {
		fmt.Fprintln(w, "\nAllocations")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tGROUP\tDEVICE\tVERSION\tSTATE\tHEALTH\tMESSAGE")
		for _, a := range st.Allocs {
			health := string(a.Health)
			if health == "" {
				health = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", a.ID, a.Group, a.Device, a.Version, a.State, health, a.Message)
		}
		tw.Flush()
	}
	if st.AllocsOmitted > 0 {
		fmt.Fprintf(w, "…and %d more allocations%s; see `tether device list`\n", st.AllocsOmitted, omittedStates(st))
	}
}

// omittedStates says by state which allocations a status left out, as
// " (178990 running, 10 complete)": its counts less those it lists. It is
// "" when the two do not add up to AllocsOmitted.
func omittedStates(st protocol.JobStatus) string {
	listed := map[protocol.AllocState]int{}
	for _, a := range st.Allocs {
		switch a.State {
		case protocol.AllocRunning, protocol.AllocComplete, protocol.AllocFailed, protocol.AllocDisconnected, protocol.AllocLost:
			listed[a.State]++
		default:
			listed[protocol.AllocPending]++ // as the counts do
		}
	}
	c := st.Counts
	var parts []string
	sum := 0
	for _, s := range []struct {
		state protocol.AllocState
		count int
	}{{protocol.AllocRunning, c.Running}, {protocol.AllocComplete, c.Complete}, {protocol.AllocPending, c.Pending},
		{protocol.AllocFailed, c.Failed}, {protocol.AllocDisconnected, c.Disconnected}, {protocol.AllocLost, c.Lost}} {
		n := s.count - listed[s.state]
		if n < 0 {
			return ""
		}
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s.state))
			sum += n
		}
	}
	if sum != st.AllocsOmitted {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func newJobStopCmd(g *globals) *cobra.Command {
	var detach bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop JOB",
		Short: "Stop a job: delete its document and wait until its workloads are gone",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			ctx := cmd.Context()
			c, topics, statuses, err := g.followStatus(ctx, id)
			if err != nil {
				return err
			}
			defer c.Close()
			before, err := settledStatus(ctx, c, topics, statuses)
			if err != nil {
				return err
			}
			if before == nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "job %s not found\n", id)
				return cli.ExitError{Code: 1}
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = c.Publish(pctx, topics.Job(id), nil, true, 1)
			cancel()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Stopping job %s\n", id)
			if detach || before.State == protocol.JobStopped {
				return nil
			}
			if before.AllocsOmitted > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "The status lists %d of the job's %d allocations: waiting only for their devices\n",
					len(before.Allocs), len(before.Allocs)+before.AllocsOmitted)
			}
			return waitStopped(ctx, c, topics, out, cmd.ErrOrStderr(), statuses, before.Allocs, timeout)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the stop is published")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the workloads to go")
	return cmd
}

// waitStopped waits for the planner to mark the job stopped and for every
// device that ran one of its allocations to report it gone.
func waitStopped(ctx context.Context, c *bus.Client, topics protocol.Topics, out, errOut io.Writer, statuses <-chan protocol.JobStatus, allocs []protocol.AllocSummary, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for stopped := false; !stopped; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			fmt.Fprintln(errOut, "timed out waiting for the planner")
			return cli.ExitError{Code: 1}
		case st := <-statuses:
			stopped = st.State == protocol.JobStopped
		}
	}
	remaining := map[string]map[string]bool{} // device → alloc ids still reported
	for _, a := range allocs {
		if remaining[a.Device] == nil {
			remaining[a.Device] = map[string]bool{}
		}
		remaining[a.Device][a.ID] = true
	}
	reports := make(chan protocol.Reported, 64)
	for dev := range remaining {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Subscribe(sctx, topics.Reported(dev), 1, func(m bus.Message) {
			if r, err := protocol.DecodeReported(m.Payload); err == nil {
				reports <- r
			}
		})
		cancel()
		if err != nil {
			return err
		}
	}
	for len(remaining) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			for dev, ids := range remaining {
				fmt.Fprintf(errOut, "device %s still reports %d allocation(s) of the job (offline?)\n", dev, len(ids))
			}
			return cli.ExitError{Code: 1}
		case r := <-reports:
			ids := remaining[r.Device]
			if ids == nil {
				continue
			}
			present := map[string]bool{}
			for _, a := range r.Allocations {
				present[a.ID] = true
			}
			for id := range ids {
				if !present[id] {
					delete(ids, id)
				}
			}
			if len(ids) == 0 {
				delete(remaining, r.Device)
				fmt.Fprintf(out, "device %s: stopped\n", r.Device)
			}
		}
	}
	fmt.Fprintln(out, "Job stopped")
	return nil
}
