package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/protocol"
)

func newDeviceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "device", Short: "Inspect devices, drain them, set their eligibility"}
	cmd.AddCommand(newDeviceListCmd(g), newDeviceDrainCmd(g), newDeviceEligibilityCmd(g))
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
