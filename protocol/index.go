package protocol

import (
	"errors"
	"fmt"
	"time"
)

// DeviceIndexPage is one page of the planner's device index, retained on
// DeviceIndex(Page). A subscriber to a filter gets all its retained
// messages at once, and brokers drop what does not fit the client's queue
// (mochi: 8,192 packets) without telling it: reading every device's own
// topics misses devices in a large fleet, reading the index does not.
//
// The devices are sorted by id across all pages; every page but the last is
// full. Pages is the number of pages of the index this page belongs to: a
// reader has the whole index when it holds pages 0 to Pages-1 that all
// carry the same Pages. Pages past the end are deleted (empty retained
// payload) when the fleet shrinks.
type DeviceIndexPage struct {
	Page    int           `json:"page"`
	Pages   int           `json:"pages"`
	Devices []DeviceBrief `json:"devices"`
	// UpdatedAt is when the page's content last changed.
	UpdatedAt time.Time `json:"updated_at"`
}

// DeviceBrief is one device in the index: what `tether device list` shows.
// Presence, Facts and Scheduling are nil until the device (or, for
// Scheduling, an operator) has published the document they come from; their
// fields keep the names they have there.
type DeviceBrief struct {
	ID         string           `json:"id"`
	Presence   *PresenceBrief   `json:"presence,omitempty"`
	Facts      *FactsBrief      `json:"facts,omitempty"`
	Scheduling *SchedulingBrief `json:"scheduling,omitempty"`
	// AllocationsTotal counts the allocations in the device's last report,
	// AllocationsRunning those of them in state running.
	AllocationsTotal   int `json:"allocations_total"`
	AllocationsRunning int `json:"allocations_running"`
	// ReportedAt is when the planner received the device's last report, by
	// the server's clock; nil before the first.
	ReportedAt *time.Time `json:"reported_at,omitempty"`
}

// PresenceBrief is a device's presence in the index.
type PresenceBrief struct {
	Status PresenceStatus `json:"status"`
	// Since is when Status began: the device's own time when its presence
	// message carries one, otherwise (a last will has none) when the
	// planner saw the status change.
	Since *time.Time `json:"since,omitempty"`
}

// FactsBrief is the part of a device's facts the index carries.
type FactsBrief struct {
	Arch     string            `json:"arch"`
	OS       string            `json:"os"`
	CPUMHz   int               `json:"cpu_mhz"`
	MemoryMB int               `json:"memory_mb"`
	Drivers  []string          `json:"drivers"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// SchedulingBrief is a device's scheduling setting in the index, as in
// Scheduling.
type SchedulingBrief struct {
	Eligible *bool `json:"eligible,omitempty"`
	Drain    bool  `json:"drain,omitempty"`
}

// IsEligible reports whether the device takes new allocations.
func (s SchedulingBrief) IsEligible() bool {
	return Scheduling{Eligible: s.Eligible, Drain: s.Drain}.IsEligible()
}

// DecodeDeviceIndexPage reads and validates a page of the device index.
func DecodeDeviceIndexPage(data []byte) (DeviceIndexPage, error) {
	var pg DeviceIndexPage
	if err := decodeStrict(data, &pg); err != nil {
		return DeviceIndexPage{}, err
	}
	var errs []error
	if pg.Pages < 1 {
		errs = append(errs, fieldErr("pages", "must be at least 1, got %d", pg.Pages))
	}
	if pg.Page < 0 {
		errs = append(errs, fieldErr("page", "must not be negative, got %d", pg.Page))
	} else if pg.Pages >= 1 && pg.Page >= pg.Pages {
		errs = append(errs, fieldErr("page", "%d is past the last page: pages is %d", pg.Page, pg.Pages))
	}
	for i, d := range pg.Devices {
		p := fmt.Sprintf("devices[%d]", i)
		if err := ValidateID(d.ID); err != nil {
			errs = append(errs, fieldErr(p+".id", "%v", err))
		} else if i > 0 && d.ID <= pg.Devices[i-1].ID {
			errs = append(errs, fieldErr(p+".id", "%q after %q: want ids in ascending order, each once", d.ID, pg.Devices[i-1].ID))
		}
		if pr := d.Presence; pr != nil && pr.Status != Online && pr.Status != Offline {
			errs = append(errs, fieldErr(p+".presence.status", "unknown status %q, want online or offline", pr.Status))
		}
		if f := d.Facts; f != nil {
			if f.CPUMHz < 0 {
				errs = append(errs, fieldErr(p+".facts.cpu_mhz", "must not be negative"))
			}
			if f.MemoryMB < 0 {
				errs = append(errs, fieldErr(p+".facts.memory_mb", "must not be negative"))
			}
			for _, k := range sortedKeys(f.Labels) {
				if err := ValidateID(k); err != nil {
					errs = append(errs, fieldErr(p+".facts.labels."+k, "invalid label key: %v", err))
				}
			}
		}
		if s := d.Scheduling; s != nil && s.Drain && s.Eligible != nil && *s.Eligible {
			errs = append(errs, fieldErr(p+".scheduling.eligible", "must be false while drain is true"))
		}
		if d.AllocationsTotal < 0 {
			errs = append(errs, fieldErr(p+".allocations_total", "must not be negative"))
		}
		if d.AllocationsRunning < 0 || d.AllocationsRunning > d.AllocationsTotal {
			errs = append(errs, fieldErr(p+".allocations_running", "%d: want 0 to allocations_total (%d)", d.AllocationsRunning, d.AllocationsTotal))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return DeviceIndexPage{}, err
	}
	return pg, nil
}
