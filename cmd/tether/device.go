package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/planner"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

func newDeviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "device", Short: "Inspect devices, drain them, set their eligibility, manage their identities"}
	cmd.AddCommand(newDeviceListCmd(g), newDeviceDrainCmd(g), newDeviceEligibilityCmd(g),
		newDeviceAddCmd(g), newDeviceRevokeCmd(g), newDeviceIdentitiesCmd(g))
	return cmd
}

func newDeviceListCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices with their presence, facts and allocations",
		Long: `List devices with their presence, facts, scheduling and allocation counts,
from the device index the planner publishes (fleet/devices/{page}).

A server older than this command publishes no index; the list is then read
from every device's own topics, which brokers deliver at once and cut short
beyond their queue (the embedded broker's holds 8,192 messages): with more
devices than that, such a list can be incomplete, and it says so on stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			c, topics, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			devices, err := readDeviceIndex(cmd.Context(), c, topics)
			if errors.Is(err, errNoIndex) {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v; reading every device's own topics instead, which can leave out devices when there are more than 8,192\n", err)
				devices, err = readDeviceTopics(cmd.Context(), c, topics)
			}
			if err != nil {
				return err
			}
			return printDevices(cmd.OutOrStdout(), output, devices)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

// errNoIndex says the broker holds no device index to read.
var errNoIndex = errors.New("no device index on the broker")

// indexReads is how many times readDeviceIndex looks at the index before it
// gives up on one that is not whole.
const indexReads = 3

// readDeviceIndex reads the device index the planner publishes: pages 0 to
// Pages-1, all with the Pages of page 0 (pages past it are left over from a
// larger fleet). The planner publishes changed pages one after another, so
// a read can catch some pages old and some new; the subscription stays, so
// the rest of a republished index arrives, and the index is looked at again
// a moment later, up to indexReads times. The error wraps errNoIndex when
// there is no page 0 at first look, or the broker refuses the subscription
// (an ACL written before the index existed).
func readDeviceIndex(ctx context.Context, c *bus.Client, topics protocol.Topics) ([]protocol.DeviceBrief, error) {
	var mu sync.Mutex
	pages := map[int]protocol.DeviceIndexPage{}
	bad := map[int]error{}
	handle := func(m bus.Message) {
		kind, id, err := topics.Parse(m.Topic)
		if err != nil || kind != protocol.KindDeviceIndex {
			return
		}
		n, _ := protocol.ParsePage(id)
		mu.Lock()
		defer mu.Unlock()
		delete(pages, n)
		delete(bad, n)
		if len(m.Payload) == 0 {
			return // deleted
		}
		pg, err := protocol.DecodeDeviceIndexPage(m.Payload)
		if err == nil && pg.Page != n {
			err = fmt.Errorf("holds page %d", pg.Page)
		}
		if err != nil {
			bad[n] = err
			return
		}
		pages[n] = pg
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := c.Subscribe(sctx, topics.DeviceIndexFilter(), 1, handle)
	cancel()
	if errors.Is(err, bus.ErrRefused) {
		return nil, fmt.Errorf("%w: %w (does the broker's ACL let this client read it?)", errNoIndex, err)
	}
	if err != nil {
		return nil, err
	}
	var last error
	for read := 0; read < indexReads; read++ {
		if read > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(read) * 300 * time.Millisecond):
			}
		}
		bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Barrier(bctx, topics.Base())
		cancel()
		if err != nil {
			return nil, err
		}
		mu.Lock()
		devices, err := wholeIndex(pages, bad)
		mu.Unlock()
		if err == nil || read == 0 && errors.Is(err, errNoIndex) {
			return devices, err
		}
		last = err
	}
	return nil, fmt.Errorf("the device index is incomplete or inconsistent after %d reads (the planner may be republishing it: try again): %w", indexReads, last)
}

// wholeIndex puts the pages of one index together, or says what is missing
// or inconsistent.
func wholeIndex(pages map[int]protocol.DeviceIndexPage, bad map[int]error) ([]protocol.DeviceBrief, error) {
	first, ok := pages[0]
	if !ok {
		if err := bad[0]; err != nil {
			return nil, fmt.Errorf("device index page 0: %w", err)
		}
		return nil, fmt.Errorf("%w (a server older than this command, or its planner has not finished a pass yet)", errNoIndex)
	}
	devices := []protocol.DeviceBrief{}
	for i := 0; i < first.Pages; i++ {
		pg, ok := pages[i]
		switch {
		case bad[i] != nil:
			return nil, fmt.Errorf("device index page %d: %w", i, bad[i])
		case !ok:
			return nil, fmt.Errorf("device index page %d of %d is missing", i, first.Pages)
		case pg.Pages != first.Pages:
			return nil, fmt.Errorf("device index page %d says there are %d pages, page 0 says %d", i, pg.Pages, first.Pages)
		case len(pg.Devices) > 0 && len(devices) > 0 && pg.Devices[0].ID <= devices[len(devices)-1].ID:
			return nil, fmt.Errorf("device index page %d starts with %s, which does not sort after %s at the end of page %d", i, pg.Devices[0].ID, devices[len(devices)-1].ID, i-1)
		}
		devices = append(devices, pg.Devices...)
	}
	return devices, nil
}

// readDeviceTopics lists the devices from their own retained topics, as
// before the device index: complete only while the broker's queue for this
// client holds every message the filters match.
func readDeviceTopics(ctx context.Context, c *bus.Client, topics protocol.Topics) ([]protocol.DeviceBrief, error) {
	msgs, err := collect(ctx, c, topics.Base(),
		topics.DevicesFilter(protocol.KindPresence), topics.DevicesFilter(protocol.KindFacts), topics.DevicesFilter(protocol.KindReported),
		topics.DevicesFilter(protocol.KindScheduling))
	if err != nil {
		return nil, err
	}
	records := map[string]*store.DeviceRecord{}
	get := func(id string) *store.DeviceRecord {
		if records[id] == nil {
			records[id] = &store.DeviceRecord{ID: id}
		}
		return records[id]
	}
	for _, m := range msgs {
		kind, id, err := topics.Parse(m.Topic)
		if err != nil || len(m.Payload) == 0 {
			continue
		}
		switch kind {
		case protocol.KindPresence:
			if p, err := protocol.DecodePresence(m.Payload); err == nil {
				get(id).Presence = &p
			}
		case protocol.KindFacts:
			if f, err := protocol.DecodeFacts(m.Payload); err == nil {
				get(id).Facts = &f
			}
		case protocol.KindReported:
			if r, err := protocol.DecodeReported(m.Payload); err == nil {
				get(id).Reported = &r
			}
		case protocol.KindScheduling:
			if sc, err := protocol.DecodeScheduling(m.Payload); err == nil {
				get(id).Scheduling = &sc
			}
		}
	}
	devices := make([]protocol.DeviceBrief, 0, len(records))
	for _, r := range records {
		devices = append(devices, planner.DeviceBrief(*r))
	}
	sort.Slice(devices, func(i, j int) bool { return devices[i].ID < devices[j].ID })
	return devices, nil
}

// printDevices writes the device list as a table, or as JSON: the index's
// entries as they are.
func printDevices(w io.Writer, output string, devices []protocol.DeviceBrief) error {
	if output == "json" {
		if devices == nil {
			devices = []protocol.DeviceBrief{}
		}
		return writeJSON(w, devices)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATUS\tARCH\tCPU(MHz)\tMEMORY(MB)\tDRIVERS\tALLOCS\tLABELS")
	for _, d := range devices {
		status, arch, cpu, mem, drivers, labels := "unknown", "-", "-", "-", "-", "-"
		if d.Presence != nil {
			status = string(d.Presence.Status)
		}
		if sc := d.Scheduling; sc != nil {
			switch {
			case sc.Drain:
				status += ",draining"
			case !sc.IsEligible():
				status += ",ineligible"
			}
		}
		if f := d.Facts; f != nil {
			arch = f.Arch
			cpu = fmt.Sprint(f.CPUMHz)
			mem = fmt.Sprint(f.MemoryMB)
			drivers = strings.Join(f.Drivers, ",")
			var ls []string
			for k, val := range f.Labels {
				ls = append(ls, k+"="+val)
			}
			sort.Strings(ls)
			if len(ls) > 0 {
				labels = strings.Join(ls, ",")
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d running\t%s\n", d.ID, status, arch, cpu, mem, drivers, d.AllocationsRunning, d.AllocationsTotal, labels)
	}
	return tw.Flush()
}

func newDeviceAddCmd(g *globals) *cobra.Command {
	var labels []string
	cmd := &cobra.Command{
		Use:   "add ID",
		Short: "Give a device an identity; its secret is shown once",
		Long: `Give a device an identity and print its secret, which is stored only as a
hash. Start the device's edged with --username ID --password SECRET (or put
them in its config file). Devices with a client certificate whose common name
is their id need no secret; fleets can let devices enroll themselves instead
(tether enroll token create).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := protocol.ValidateID(args[0]); err != nil {
				return fmt.Errorf("device id: %w", err)
			}
			lbls, err := cli.ParseLabels(labels)
			if err != nil {
				return err
			}
			res, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpDeviceAdd, ID: args[0], Labels: lbls})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "Device %s added; its secret is shown only now: edged run --device-id %s --username %s --password <secret> ...\n", args[0], args[0], args[0])
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label KEY=VALUE recorded with the identity (repeatable)")
	return cmd
}

func newDeviceRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Cut a device off at once: its connection is closed and it cannot connect or enroll again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := protocol.ValidateID(args[0]); err != nil {
				return fmt.Errorf("device id: %w", err)
			}
			if _, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpDeviceRevoke, ID: args[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Device %s revoked.\n", args[0])
			return nil
		},
	}
}

func newDeviceIdentitiesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "identities",
		Short: "List device identities (added or enrolled; never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpDeviceList})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "DEVICE\tCREATED\tENROLLED BY\tLABELS\tSTATE")
			for _, d := range res.Identities {
				state := "active"
				if d.Revoked {
					state = "revoked"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", d.Device, d.CreatedAt.Local().Format(time.DateTime), orDash(d.EnrolledBy), orDash(formatLabels(d.Labels)), state)
			}
			return w.Flush()
		},
	}
}
