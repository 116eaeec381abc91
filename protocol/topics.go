package protocol

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Version is the protocol version segment that follows the topic root.
const Version = "v1"

// DefaultRoot is the topic root used when none is configured.
const DefaultRoot = "tether"

// Kind names one of the topics of the protocol.
type Kind string

// The topics of protocol v1.
const (
	KindJob       Kind = "job"       // {root}/v1/jobs/{job}: job document, retained
	KindJobStatus Kind = "jobstatus" // {root}/v1/jobs/{job}/status: retained
	KindDesired   Kind = "desired"   // {root}/v1/devices/{device}/desired: retained
	KindReported  Kind = "reported"  // {root}/v1/devices/{device}/reported: retained
	KindPresence  Kind = "presence"  // {root}/v1/devices/{device}/presence: retained, last will
	KindFacts     Kind = "facts"     // {root}/v1/devices/{device}/facts: retained
	KindEvents    Kind = "events"    // {root}/v1/devices/{device}/events: not retained
	// Rollouts and scheduling.
	KindPromote    Kind = "promote"    // {root}/v1/jobs/{job}/promote: operator → planner, not retained
	KindHistory    Kind = "history"    // {root}/v1/jobs/{job}/history: planner → anyone, retained
	KindScheduling Kind = "scheduling" // {root}/v1/devices/{device}/scheduling: operator → planner, retained
	// Dry runs: the request carries a job document, the planner answers on
	// the result topic; neither is retained. The id is the requester's
	// nonce.
	KindPlan       Kind = "plan"       // {root}/v1/plans/{id}
	KindPlanResult Kind = "planresult" // {root}/v1/plans/{id}/result
	// KindDeviceIndex is one page of the planner's device index; its
	// identifier is the page number in decimal.
	KindDeviceIndex Kind = "deviceindex" // {root}/v1/fleet/devices/{page}: planner → anyone, retained
)

var deviceKinds = map[string]Kind{
	"desired":    KindDesired,
	"reported":   KindReported,
	"presence":   KindPresence,
	"facts":      KindFacts,
	"events":     KindEvents,
	"scheduling": KindScheduling,
}

var jobKinds = map[string]Kind{
	"status":  KindJobStatus,
	"promote": KindPromote,
	"history": KindHistory,
}

// idPattern is the shape of every identifier that ends up in a topic, a
// container name or a label: no '/', '+', '#', whitespace or control
// characters, so an identifier can never escape its topic level.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// ValidateID reports whether s may be used as a job, group, task or device
// identifier.
func ValidateID(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if !idPattern.MatchString(s) {
		return fmt.Errorf("invalid identifier %q: want 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit", s)
	}
	return nil
}

// Topics builds and parses the topics under one root. The zero value uses
// DefaultRoot.
type Topics struct {
	Root string
}

// NewTopics returns the topic set under root; an empty root means DefaultRoot.
// The root may hold several levels ("acme/prod") but no wildcards.
func NewTopics(root string) (Topics, error) {
	if root == "" {
		root = DefaultRoot
	}
	if strings.ContainsAny(root, "+#\x00") || strings.HasPrefix(root, "/") || strings.HasSuffix(root, "/") || strings.Contains(root, "//") || strings.HasPrefix(root, "$") {
		return Topics{}, fmt.Errorf("topic root %q: want levels without wildcards, leading '$' or empty levels", root)
	}
	return Topics{Root: root}, nil
}

// Base is "{root}/v1", the prefix of every topic.
func (t Topics) Base() string { return t.base() }

func (t Topics) base() string {
	if t.Root == "" {
		return DefaultRoot + "/" + Version
	}
	return t.Root + "/" + Version
}

// Job is the topic an operator publishes a job document to.
func (t Topics) Job(job string) string { return t.base() + "/jobs/" + job }

// JobStatus is the topic the planner publishes a job's status to.
func (t Topics) JobStatus(job string) string { return t.base() + "/jobs/" + job + "/status" }

// Device is the topic of the given kind for one device.
func (t Topics) Device(device string, kind Kind) string {
	return t.base() + "/devices/" + device + "/" + string(kind)
}

// Desired is the topic holding a device's desired state.
func (t Topics) Desired(device string) string { return t.Device(device, KindDesired) }

// Reported is the topic holding a device's observed state.
func (t Topics) Reported(device string) string { return t.Device(device, KindReported) }

// Presence is the topic holding a device's presence (birth and last will).
func (t Topics) Presence(device string) string { return t.Device(device, KindPresence) }

// Facts is the topic holding a device's facts.
func (t Topics) Facts(device string) string { return t.Device(device, KindFacts) }

// Events is the topic a device publishes task lifecycle events to.
func (t Topics) Events(device string) string { return t.Device(device, KindEvents) }

// Promote is the topic an operator publishes a promote request to.
func (t Topics) Promote(job string) string { return t.base() + "/jobs/" + job + "/promote" }

// History is the topic the planner publishes a job's version history to.
func (t Topics) History(job string) string { return t.base() + "/jobs/" + job + "/history" }

// Scheduling is the topic holding an operator's eligibility and drain
// settings for a device.
func (t Topics) Scheduling(device string) string { return t.Device(device, KindScheduling) }

// Plan is the topic a dry-run request with the given nonce goes to, and
// PlanResult the one its answer comes back on.
func (t Topics) Plan(id string) string       { return t.base() + "/plans/" + id }
func (t Topics) PlanResult(id string) string { return t.base() + "/plans/" + id + "/result" }

// PromoteFilter matches every promote topic.
func (t Topics) PromoteFilter() string { return t.base() + "/jobs/+/promote" }

// PlansFilter matches every dry-run request topic.
func (t Topics) PlansFilter() string { return t.base() + "/plans/+" }

// JobsFilter matches every job document topic.
func (t Topics) JobsFilter() string { return t.base() + "/jobs/+" }

// JobStatusFilter matches every job status topic.
func (t Topics) JobStatusFilter() string { return t.base() + "/jobs/+/status" }

// DevicesFilter matches the given kind of topic for every device.
func (t Topics) DevicesFilter(kind Kind) string { return t.base() + "/devices/+/" + string(kind) }

// Parse splits a topic of this root into its kind and identifier (job or
// device). It returns an error for topics outside the root, of unknown shape,
// or whose identifier is invalid.
func (t Topics) Parse(topic string) (Kind, string, error) {
	prefix := t.base() + "/"
	if !strings.HasPrefix(topic, prefix) {
		return "", "", fmt.Errorf("topic %q: not under %q", topic, t.base())
	}
	parts := strings.Split(strings.TrimPrefix(topic, prefix), "/")
	var kind Kind
	switch {
	case len(parts) == 2 && parts[0] == "jobs":
		kind = KindJob
	case len(parts) == 3 && parts[0] == "jobs":
		k, ok := jobKinds[parts[2]]
		if !ok {
			return "", "", fmt.Errorf("topic %q: unknown job topic %q", topic, parts[2])
		}
		kind = k
	case len(parts) == 2 && parts[0] == "plans":
		kind = KindPlan
	case len(parts) == 3 && parts[0] == "plans" && parts[2] == "result":
		kind = KindPlanResult
	case len(parts) == 3 && parts[0] == "devices":
		k, ok := deviceKinds[parts[2]]
		if !ok {
			return "", "", fmt.Errorf("topic %q: unknown device topic %q", topic, parts[2])
		}
		kind = k
	case len(parts) == 3 && parts[0] == "fleet" && parts[1] == "devices":
		if _, err := ParsePage(parts[2]); err != nil {
			return "", "", fmt.Errorf("topic %q: %w", topic, err)
		}
		return KindDeviceIndex, parts[2], nil
	default:
		return "", "", fmt.Errorf("topic %q: unknown topic shape", topic)
	}
	if err := ValidateID(parts[1]); err != nil {
		return "", "", fmt.Errorf("topic %q: %w", topic, err)
	}
	return kind, parts[1], nil
}

var allocPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// FleetSummary is the topic the planner publishes the fleet overview to
// (retained), so that a dashboard need not read every device's messages to
// draw it.
func (t Topics) FleetSummary() string { return t.base() + "/fleet/summary" }

// DeviceIndex is the topic of one page (0-based) of the device index the
// planner publishes (retained), so that a reader learns of every device
// from a few messages instead of several per device; see DeviceIndexPage.
func (t Topics) DeviceIndex(page int) string {
	return t.base() + "/fleet/devices/" + strconv.Itoa(page)
}

// DeviceIndexFilter matches every page of the device index.
func (t Topics) DeviceIndexFilter() string { return t.base() + "/fleet/devices/+" }

// ParsePage reads the page number of a device index topic: a decimal
// number without sign or leading zeros, so that every page has exactly one
// topic.
func ParsePage(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("invalid page number %q: want a decimal number from 0, without sign or leading zeros", s)
	}
	return n, nil
}
