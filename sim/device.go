package sim

import (
	"sync"
	"time"

	"github.com/tether-edge/tether/edged"
	"github.com/tether-edge/tether/protocol"
)

// jobVersion names one version of a job.
type jobVersion struct {
	job     string
	version uint64
}

// jobNow is a job's allocations on a device, as its last confirmed report
// says.
type jobNow struct {
	allocs    int
	running   int
	byVersion map[uint64]int // running allocations by job version
}

// device is what the simulator knows about one simulated device. The
// agent's goroutines write it through observe; readers take mu.
type device struct {
	id string

	mu           sync.Mutex
	started      bool // the agent is running
	failed       bool // the agent could not start
	connected    bool
	connects     int
	firstConnect time.Time
	lastConnect  time.Time

	desiredGen   uint64
	desiredAt    time.Time // when desiredGen was accepted
	genAccepted  map[uint64]time.Time
	jobDesiredAt map[jobVersion]time.Time // first accepted document with the job at that version
	jobRunningAt map[jobVersion]time.Time // first confirmed report with every allocation of it running
	latencies    []time.Duration          // desired accepted → confirmed running, per generation
	ranGen       uint64                   // the last generation confirmed running, and when
	ranAt        time.Time

	reports      int
	firstReport  time.Time
	lastReport   time.Time
	reportGen    uint64
	reportAllocs int
	allRunning   bool // every allocation of the last confirmed report runs
	jobs         map[string]jobNow

	starts  int
	traffic Traffic
}

func newDevice(id string) *device {
	return &device{
		id:           id,
		genAccepted:  map[uint64]time.Time{},
		jobDesiredAt: map[jobVersion]time.Time{},
		jobRunningAt: map[jobVersion]time.Time{},
		jobs:         map[string]jobNow{},
	}
}

// observe is the device's edged.Config.Observe. It only updates the record.
func (d *device) observe(o edged.Observation) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch o.Kind {
	case edged.ObsConnected:
		d.connected = true
		d.connects++
		if d.firstConnect.IsZero() {
			d.firstConnect = o.Time
		}
		d.lastConnect = o.Time
	case edged.ObsDisconnected:
		d.connected = false
	case edged.ObsDesiredAccepted:
		d.desiredGen, d.desiredAt = o.Generation, o.Time
		d.genAccepted[o.Generation] = o.Time
		for _, al := range o.Allocs {
			k := jobVersion{al.Job, al.JobVersion}
			if _, ok := d.jobDesiredAt[k]; !ok {
				d.jobDesiredAt[k] = o.Time
			}
		}
	case edged.ObsReportConfirmed:
		d.onReport(o)
	case edged.ObsWorkloadStarted:
		d.starts++
	case edged.ObsSent:
		d.traffic.MsgsSent++
		d.traffic.BytesSent += int64(o.Bytes)
		d.traffic.WireBytesSent += publishWireBytes(len(o.Topic), o.Bytes)
		d.traffic.WireBytesReceived += pubackBytes
	case edged.ObsReceived:
		d.traffic.MsgsReceived++
		d.traffic.BytesReceived += int64(o.Bytes)
		d.traffic.WireBytesReceived += publishWireBytes(len(o.Topic), o.Bytes)
		d.traffic.WireBytesSent += pubackBytes
	}
}

func (d *device) onReport(o edged.Observation) {
	d.reports++
	if d.firstReport.IsZero() {
		d.firstReport = o.Time
	}
	d.lastReport = o.Time
	d.reportGen = o.Generation
	d.reportAllocs = len(o.Allocs)
	d.allRunning = len(o.Allocs) > 0
	jobs := map[string]jobNow{}
	minV, maxV := map[string]uint64{}, map[string]uint64{}
	for _, al := range o.Allocs {
		j := jobs[al.Job]
		j.allocs++
		if al.State == protocol.AllocRunning {
			j.running++
			if j.byVersion == nil {
				j.byVersion = map[uint64]int{}
			}
			j.byVersion[al.JobVersion]++
		} else {
			d.allRunning = false
		}
		jobs[al.Job] = j
		if v, ok := minV[al.Job]; !ok || al.JobVersion < v {
			minV[al.Job] = al.JobVersion
		}
		maxV[al.Job] = max(maxV[al.Job], al.JobVersion)
	}
	d.jobs = jobs
	for job, j := range jobs {
		if j.running != j.allocs || minV[job] != maxV[job] {
			continue
		}
		k := jobVersion{job, maxV[job]}
		if _, ok := d.jobRunningAt[k]; !ok {
			d.jobRunningAt[k] = o.Time
		}
	}
	// The latency of a generation counts once: from its acceptance to the
	// first confirmed report of it with everything running.
	if at, ok := d.genAccepted[o.Generation]; ok && d.allRunning {
		d.latencies = append(d.latencies, o.Time.Sub(at))
		d.ranGen, d.ranAt = o.Generation, o.Time
		delete(d.genAccepted, o.Generation)
	}
	for g := range d.genAccepted {
		if g < o.Generation {
			delete(d.genAccepted, g) // superseded before it ran
		}
	}
}

// running says whether the device runs what it was last told to: its last
// confirmed report is of the last accepted generation, with at least one
// allocation, all running. Under mu.
func (d *device) running() bool {
	return d.desiredGen > 0 && d.reportGen == d.desiredGen && d.allRunning
}

// MQTT framing of what the agents send and receive, to estimate the bytes
// on the wire from the payloads: a QoS 1 PUBLISH is a fixed header (type
// byte and remaining length), the topic with its length, a packet id and
// the payload; its PUBACK is 4 bytes. Keepalive pings (2 bytes each way per
// keepalive without other traffic) and CONNECT/SUBSCRIBE are not counted.
const pubackBytes = 4

func publishWireBytes(topicLen, payloadLen int) int64 {
	rem := 2 + topicLen + 2 + payloadLen
	n := 1 + rem
	for {
		n++
		if rem < 128 {
			break
		}
		rem >>= 7
	}
	return int64(n)
}
