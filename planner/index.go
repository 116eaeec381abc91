package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// DeviceIndexPageSize is how many devices one page of the device index
// holds. A device's entry with a dozen labels encodes to about 620 bytes,
// so a full page (about 300 KiB) stays far below the 1 MiB packet limit of
// the embedded broker (TestDeviceIndexPageFitsAPacket measures one), and
// 18,000 devices make 36 retained messages: a reader's queue holds them
// with room to spare, where one message per device overflows it.
const DeviceIndexPageSize = 500

// indexHashesKey is the store meta key holding the hash of every device
// index page as last published, in page order (a JSON list). An empty
// entry stands for a page that must be published, or deleted when past
// the end, on the next pass.
const indexHashesKey = "device_index_hashes"

// BuildDeviceIndex derives the pages of the device index from the device
// records: one entry per device that has published anything (or that an
// operator set scheduling for), sorted by id, pageSize to a page. There is
// always at least one page, so that an empty fleet still has an index.
// UpdatedAt is left zero so that equal pages hash equal.
func BuildDeviceIndex(records []store.DeviceRecord, pageSize int) []protocol.DeviceIndexPage {
	if pageSize < 1 {
		pageSize = DeviceIndexPageSize
	}
	briefs := make([]protocol.DeviceBrief, 0, len(records))
	for _, r := range records {
		if r.Facts == nil && r.Presence == nil && r.Reported == nil && r.Scheduling == nil {
			continue
		}
		briefs = append(briefs, DeviceBrief(r))
	}
	sort.Slice(briefs, func(i, j int) bool { return briefs[i].ID < briefs[j].ID })
	n := max(1, (len(briefs)+pageSize-1)/pageSize)
	pages := make([]protocol.DeviceIndexPage, n)
	for i := range pages {
		lo, hi := min(i*pageSize, len(briefs)), min((i+1)*pageSize, len(briefs))
		pages[i] = protocol.DeviceIndexPage{Page: i, Pages: n, Devices: briefs[lo:hi:hi]}
	}
	return pages
}

// DeviceBrief is a device's entry in the index, from its record. Without a
// time of its own, a presence's Since is the record's PresenceChangedAt;
// ReportedAt is the record's.
func DeviceBrief(r store.DeviceRecord) protocol.DeviceBrief {
	b := protocol.DeviceBrief{ID: r.ID}
	if pr := r.Presence; pr != nil {
		since := pr.Since
		if since == nil && !r.PresenceChangedAt.IsZero() {
			at := r.PresenceChangedAt
			since = &at
		}
		b.Presence = &protocol.PresenceBrief{Status: pr.Status, Since: since}
	}
	if f := r.Facts; f != nil {
		b.Facts = &protocol.FactsBrief{Arch: f.Arch, OS: f.OS, CPUMHz: f.CPUMHz, MemoryMB: f.MemoryMB, Drivers: f.Drivers, Labels: f.Labels}
	}
	if s := r.Scheduling; s != nil {
		b.Scheduling = &protocol.SchedulingBrief{Eligible: s.Eligible, Drain: s.Drain}
	}
	if rep := r.Reported; rep != nil {
		b.AllocationsTotal = len(rep.Allocations)
		for _, a := range rep.Allocations {
			if a.State == protocol.AllocRunning {
				b.AllocationsRunning++
			}
		}
	}
	if !r.ReportedAt.IsZero() {
		at := r.ReportedAt
		b.ReportedAt = &at
	}
	return b
}

// publishDeviceIndex publishes the pages of the device index whose content
// changed since they were last published, and deletes (empty retained
// payload) the pages past the end when the fleet shrank. A page that could
// not be published or deleted is tried again on the next pass.
func (p *Planner) publishDeviceIndex(ctx context.Context, records []store.DeviceRecord, now time.Time) error {
	pages := BuildDeviceIndex(records, p.cfg.IndexPageSize)
	saved, err := p.cfg.Store.Meta(indexHashesKey)
	if err != nil {
		return err
	}
	var last []string
	if saved != "" {
		if err := json.Unmarshal([]byte(saved), &last); err != nil {
			p.log.Warn().Err(err).Msg("unreadable device index hashes: republishing every page")
			last = nil
		}
	}
	hashes := make([]string, len(pages))
	var errs []error
	for i, pg := range pages {
		raw, _ := json.Marshal(pg)
		hash := protocol.Digest(raw)
		if i < len(last) && last[i] == hash {
			hashes[i] = hash
			continue
		}
		pg.UpdatedAt = now.UTC()
		payload, _ := protocol.Encode(pg)
		if err := p.publishRetained(ctx, p.cfg.Topics.DeviceIndex(i), payload); err != nil {
			errs = append(errs, fmt.Errorf("publish device index page %d: %w", i, err))
			continue
		}
		hashes[i] = hash
	}
	for i := len(pages); i < len(last); i++ {
		if err := p.publishRetained(ctx, p.cfg.Topics.DeviceIndex(i), nil); err != nil {
			errs = append(errs, fmt.Errorf("delete device index page %d: %w", i, err))
			for len(hashes) <= i {
				hashes = append(hashes, "")
			}
		}
	}
	if slices.Equal(hashes, last) {
		return errors.Join(errs...)
	}
	if len(pages) != len(last) {
		p.log.Info().Int("pages", len(pages)).Int("was", len(last)).Msg("device index resized")
	}
	raw, _ := json.Marshal(hashes)
	if err := p.cfg.Store.SetMeta(indexHashesKey, string(raw)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// publishRetained publishes a retained QoS 1 message with its own timeout.
func (p *Planner) publishRetained(ctx context.Context, topic string, payload []byte) error {
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.cfg.Bus.Publish(pctx, topic, payload, true, 1)
}
