package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/protocol"
)

func newDeviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "device", Short: "Inspect devices, drain them, set their eligibility, manage their identities"}
	cmd.AddCommand(newDeviceListCmd(g), newDeviceDrainCmd(g), newDeviceEligibilityCmd(g),
		newDeviceAddCmd(g), newDeviceRevokeCmd(g), newDeviceIdentitiesCmd(g))
	return cmd
}

// deviceView is one device as `device list` shows it.
type deviceView struct {
	ID          string                 `json:"id"`
	Presence    *protocol.Presence     `json:"presence,omitempty"`
	Facts       *protocol.Facts        `json:"facts,omitempty"`
	Scheduling  *protocol.Scheduling   `json:"scheduling,omitempty"`
	Allocations []protocol.AllocStatus `json:"allocations"`
}

func newDeviceListCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices with their presence, facts and allocations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			c, topics, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			msgs, err := collect(cmd.Context(), c, topics.Base(),
				topics.DevicesFilter(protocol.KindPresence), topics.DevicesFilter(protocol.KindFacts), topics.DevicesFilter(protocol.KindReported),
				topics.DevicesFilter(protocol.KindScheduling))
			if err != nil {
				return err
			}
			views := map[string]*deviceView{}
			get := func(id string) *deviceView {
				if views[id] == nil {
					views[id] = &deviceView{ID: id, Allocations: []protocol.AllocStatus{}}
				}
				return views[id]
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
						get(id).Allocations = r.Allocations
					}
				case protocol.KindScheduling:
					if sc, err := protocol.DecodeScheduling(m.Payload); err == nil {
						get(id).Scheduling = &sc
					}
				}
			}
			list := make([]deviceView, 0, len(views))
			for _, v := range views {
				list = append(list, *v)
			}
			sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
			out := cmd.OutOrStdout()
			if output == "json" {
				return writeJSON(out, list)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tSTATUS\tARCH\tCPU(MHz)\tMEMORY(MB)\tDRIVERS\tALLOCS\tLABELS")
			for _, v := range list {
				status, arch, cpu, mem, drivers, labels := "unknown", "-", "-", "-", "-", "-"
				if v.Presence != nil {
					status = string(v.Presence.Status)
				}
				if sc := v.Scheduling; sc != nil {
					switch {
					case sc.Drain:
						status += ",draining"
					case !sc.IsEligible():
						status += ",ineligible"
					}
				}
				if f := v.Facts; f != nil {
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
				running := 0
				for _, a := range v.Allocations {
					if a.State == protocol.AllocRunning {
						running++
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d running\t%s\n", v.ID, status, arch, cpu, mem, drivers, running, len(v.Allocations), labels)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
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
