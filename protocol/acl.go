package protocol

import (
	"fmt"
	"strings"
)

// Role is what kind of principal a client is; it decides which topics the
// client may use (see Topics.Allowed).
type Role string

// Roles.
const (
	// RoleDevice is one device: it publishes its own presence, facts,
	// reports and events and reads its own desired state.
	RoleDevice Role = "device"
	// RoleOperator submits and stops jobs, manages devices and identities,
	// and may read everything but other operators' admin answers.
	RoleOperator Role = "operator"
	// RoleViewer reads status topics (dashboards) and publishes nothing.
	RoleViewer Role = "viewer"
	// RoleEnroll is a fleet enrollment token: it may only ask, once per
	// device id, for the identity of the device it connects as.
	RoleEnroll Role = "enroll"
	// RolePlanner is the planner's own connection: everything.
	RolePlanner Role = "planner"
)

// ParseRole reads a role an operator may hand out with a token.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleOperator, RoleViewer:
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q: want operator or viewer", s)
}

// Principal is an authenticated identity.
type Principal struct {
	Role Role
	// Name is the device id for RoleDevice and the token id for
	// RoleOperator, RoleViewer and RoleEnroll.
	Name string
}

// TokenUserPrefix starts the MQTT username of every token principal
// (operators, viewers, enrollment tokens): "token/<id>". A '/' is not
// allowed in a device id, so no token can pose as a device.
const TokenUserPrefix = "token/"

// TokenUsername is the MQTT username of the token with this id.
func TokenUsername(id string) string { return TokenUserPrefix + id }

// CheckClientID reports whether principal p may connect with this MQTT
// client id. A device connects as its own id and nothing else; a token
// principal's client ids start with its username and a '/', so that no
// principal can take over another's session (a second connection with a
// client id replaces the first and inherits its queued messages).
// Enrollment connects as the device id being enrolled; whether that id is
// still free is the registry's call.
func CheckClientID(p Principal, clientID string) error {
	if strings.ContainsAny(clientID, "+#\x00") {
		return fmt.Errorf("client id %q: must not contain '+', '#' or NUL", clientID)
	}
	switch p.Role {
	case RolePlanner:
		return nil
	case RoleDevice:
		if clientID != p.Name {
			return fmt.Errorf("client id %q: device %q must connect with its device id as client id", clientID, p.Name)
		}
		return nil
	case RoleEnroll:
		if err := ValidateID(clientID); err != nil {
			return fmt.Errorf("client id %q: enrollment connects with the device id to enroll: %w", clientID, err)
		}
		return nil
	case RoleOperator, RoleViewer:
		prefix := TokenUsername(p.Name) + "/"
		if !strings.HasPrefix(clientID, prefix) || len(clientID) == len(prefix) {
			return fmt.Errorf("client id %q: a token's client ids must start with %q", clientID, prefix)
		}
		return nil
	}
	return fmt.Errorf("unknown role %q", p.Role)
}

// viewerRead are the filters, relative to the base, a viewer may read:
// status, never desired state or job documents (which may carry secrets in
// task environments).
var viewerRead = [][]string{
	{"jobs", "+", "status"},
	{"jobs", "+", "history"},
	{"fleet", "summary"},
	{"fleet", "devices", "+"},
	{"devices", "+", "presence"},
	{"devices", "+", "facts"},
	{"devices", "+", "reported"},
	{"devices", "+", "events"},
	{"devices", "+", "scheduling"},
}

// Allowed reports whether principal p, connected with clientID, may publish
// to topic (write) or subscribe to and receive from it (!write; topic is then
// a topic filter, or the name of a message about to be delivered). The rules:
//
//   - every principal: its own sync topics {base}/sync/{clientID}/+ (see
//     bus.Client.Barrier), both ways;
//   - device D: publish devices/D/{presence,facts,reported,events}; read
//     devices/D/{desired,reported,events} (the last two are the echo that
//     tells edged the broker has its report);
//   - enrollment token E, connected as device id C: publish enroll/E/C,
//     read enroll/E/C/result;
//   - viewer: read the status topics in viewerRead;
//   - operator: publish jobs/J, jobs/J/promote, devices/D/scheduling,
//     plans/N and admin/O/N where O is its own token id; read anything under
//     the base except other operators' admin topics;
//   - planner: everything.
//
// Everything else is denied, the broker's $SYS topics included. Filters
// are allowed only when every topic they can match is; "#" therefore only
// for the planner and under the base for operators.
func (t Topics) Allowed(p Principal, clientID, topic string, write bool) bool {
	if p.Role == RolePlanner {
		return true
	}
	base := t.base() + "/"
	if !strings.HasPrefix(topic, base) {
		return false
	}
	levels := strings.Split(topic[len(base):], "/")
	for i, l := range levels {
		if write && (l == "+" || l == "#") || l == "#" && i != len(levels)-1 {
			return false
		}
	}
	if t.isOwnSync(levels, clientID) {
		return true
	}
	switch p.Role {
	case RoleDevice:
		if len(levels) != 3 || levels[0] != "devices" || levels[1] != p.Name {
			return false
		}
		switch Kind(levels[2]) {
		case KindPresence, KindFacts:
			return write
		case KindReported, KindEvents:
			return true
		case KindDesired:
			return !write
		}
		return false
	case RoleEnroll:
		if len(levels) < 3 || levels[0] != "enroll" || levels[1] != p.Name || levels[2] != clientID {
			return false
		}
		if write {
			return len(levels) == 3
		}
		return len(levels) == 4 && levels[3] == "result"
	case RoleViewer:
		if write {
			return false
		}
		for _, pat := range viewerRead {
			if filterWithin(levels, pat) {
				return true
			}
		}
		return false
	case RoleOperator:
		if !write {
			// Another operator's admin answers may carry secrets it just
			// created; a filter that only might match them is fine, the
			// broker checks each message again on delivery.
			return !(len(levels) > 1 && levels[0] == "admin" && levels[1] != p.Name && levels[1] != "+" && levels[1] != "#")
		}
		switch {
		case len(levels) == 2 && (levels[0] == "jobs" || levels[0] == "plans"):
			return ValidateID(levels[1]) == nil
		case len(levels) == 3 && levels[0] == "jobs" && levels[2] == "promote":
			return ValidateID(levels[1]) == nil
		case len(levels) == 3 && levels[0] == "devices" && levels[2] == string(KindScheduling):
			return ValidateID(levels[1]) == nil
		case len(levels) == 3 && levels[0] == "admin" && levels[1] == p.Name:
			return ValidateID(levels[2]) == nil
		}
		return false
	}
	return false
}

// isOwnSync: sync/{clientID}/{one level}. A client id may span levels.
func (t Topics) isOwnSync(levels []string, clientID string) bool {
	cid := strings.Split(clientID, "/")
	if clientID == "" || len(levels) != len(cid)+2 || levels[0] != "sync" {
		return false
	}
	for i, l := range cid {
		if levels[i+1] != l {
			return false
		}
	}
	last := levels[len(levels)-1]
	return last != "" && last != "#"
}

// filterWithin reports whether every topic filter f can match is matched by
// pattern p too (both split into levels, wildcards allowed in both).
func filterWithin(f, p []string) bool {
	for i, pl := range p {
		if pl == "#" {
			return true
		}
		if i >= len(f) {
			return false
		}
		switch fl := f[i]; {
		case fl == "#":
			return false
		case pl == "+":
		case fl != pl:
			return false
		}
	}
	return len(f) == len(p)
}

// Retainable reports whether messages on topic are meant to be retained.
// Retained messages stay in the broker's memory and storage until replaced:
// on any other topic (events, requests, sync barriers) the broker drops the
// retain flag, so that no client can fill its storage with them.
func (t Topics) Retainable(topic string) bool {
	if topic == t.FleetSummary() {
		return true
	}
	kind, _, err := t.Parse(topic)
	if err != nil {
		return false
	}
	switch kind {
	case KindJob, KindJobStatus, KindHistory, KindDesired, KindReported, KindPresence, KindFacts, KindScheduling, KindDeviceIndex:
		return true
	}
	return false
}
