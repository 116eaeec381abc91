package core

import (
	"encoding/binary"
	"slices"
)

// ranker finds the best device for each new instance of a service or batch
// group without looking at every device each time.
//
// A device's score (see rank.go) is the sum of its bin packing key, which
// only changes when an instance is placed on it, its affinity key, which
// never changes, and its spread key, which is the same for every device
// sharing the values of the spread attributes. So the feasible devices that
// fit are split into buckets by those values (one bucket without spreads),
// each a max-heap by bin packing + affinity, ties to the lowest device id;
// the best device overall is the best of the bucket tops once each top's
// bucket spread key is added. Placing an instance raises (never lowers) the
// chosen device's bin packing key, so it stays at the top of its bucket
// unless it no longer fits or, with distinct_hosts, may take no other;
// devices whose distinct_property value runs out are dropped when they
// surface. A placement costs O(buckets + log devices) instead of
// O(devices).
type ranker struct {
	p       *planner
	gp      *groupPlan
	buckets []bucket
	spreads []spreadState
	last    int // bucket of the device best returned
	// The device best set aside because the planner avoids it (planner.avoid):
	// its bucket (-1 for none) and entry, put back by restore.
	held      int
	heldEntry heapEntry
}

// bucket is the devices sharing one value of every spread attribute.
type bucket struct {
	heap   []heapEntry
	values []int32 // value id per spread, -1 where the device lacks the attribute
}

// rankEntry is a heap entry before it goes to its bucket.
type rankEntry struct {
	bucket int32
	e      heapEntry
}

// heapEntry is a device in a bucket. key is its bin packing key after one
// more instance plus aff, its affinity key.
type heapEntry struct {
	key int64
	aff int64
	di  int32
}

func (a heapEntry) better(b heapEntry) bool {
	return a.key > b.key || (a.key == b.key && a.di < b.di)
}

// spreadState counts a group's live instances per value of one spread
// attribute.
type spreadState struct {
	spec      *spreadSpec
	ids       map[string]int32 // value → id
	valueOf   []int32          // by device: value id, -1 without the attribute, -2 not yet read
	counts    []int            // by value id
	targeted  []bool           // by value id: listed in the targets
	desired   []float64        // by value id: desired count of a listed value
	rest      int              // instances on values not listed (targets only)
	restWant  float64          // desired count of the values not listed (targets only)
	relWeight float64          // weight / sum of the group's spread weights

	// Even spreads: the lowest and highest count over the values of the
	// devices feasible for the group (values only found under existing
	// instances cannot take more, so they do not count), and how many of
	// those values have each count.
	feasible []bool // by value id
	lo, hi   int
	hist     map[int]int
}

func (p *planner) newRanker(gp *groupPlan) *ranker {
	r := &ranker{p: p, gp: gp, held: -1}
	spec := gp.spec
	total := float64(gp.count())
	for k := range spec.spreads {
		ss := &spec.spreads[k]
		s := spreadState{spec: ss, ids: map[string]int32{}, valueOf: make([]int32, len(p.devs)),
			relWeight: float64(ss.weight) / float64(spec.spreadSum)}
		for i := range s.valueOf {
			s.valueOf[i] = -2
		}
		if ss.targets != nil && ss.percent < 100 {
			s.restWant = float64(100-ss.percent) / 100 * total
		}
		r.spreads = append(r.spreads, s)
	}
	for k := range r.spreads {
		s := &r.spreads[k]
		for _, di := range gp.live {
			s.count(s.id(p, di, total, false))
		}
	}
	var index map[string]int // bucket by spread values; only with spreads
	if len(r.spreads) > 0 {
		index = map[string]int{}
	} else {
		r.buckets = []bucket{{}}
	}
	entries := p.rankBuf[:0]
	values := make([]int32, len(r.spreads))
	var key []byte
	for i := range p.devs {
		di := int32(i)
		if p.placeReason(gp, di) != "" {
			continue
		}
		for k := range r.spreads {
			values[k] = r.spreads[k].id(p, di, total, true) // every feasible device's value counts for even spreads
		}
		if p.distinctReason(gp, di) != "" || p.fitReason(gp, di) != "" {
			continue
		}
		d := p.devs[di]
		aff := quantize(affinityScore(d, spec))
		e := heapEntry{key: p.binPack.key(capacity(d), p.used[di].add(spec.demand.res)) + aff, aff: aff, di: di}
		b := 0
		if index != nil {
			key = key[:0]
			for _, v := range values {
				key = binary.LittleEndian.AppendUint32(key, uint32(v))
			}
			var ok bool
			if b, ok = index[string(key)]; !ok {
				b = len(r.buckets)
				index[string(key)] = b
				r.buckets = append(r.buckets, bucket{values: append([]int32(nil), values...)})
			}
		}
		entries = append(entries, rankEntry{bucket: int32(b), e: e})
	}
	p.rankBuf = entries
	// Lay the buckets' heaps out in one buffer, reused by the next group.
	start := make([]int, len(r.buckets)+1)
	for _, re := range entries {
		start[re.bucket+1]++
	}
	for b := 1; b < len(start); b++ {
		start[b] += start[b-1]
	}
	heaps := slices.Grow(p.heapBuf[:0], len(entries))[:len(entries)]
	p.heapBuf = heaps
	next := slices.Clone(start)
	for _, re := range entries {
		heaps[next[re.bucket]] = re.e
		next[re.bucket]++
	}
	for b := range r.buckets {
		h := heaps[start[b]:start[b+1]:start[b+1]]
		for i := len(h)/2 - 1; i >= 0; i-- {
			siftDown(h, i)
		}
		r.buckets[b].heap = h
	}
	for k := range r.spreads {
		r.spreads[k].initEven()
	}
	return r
}

// best returns the best device for one more instance, or false when no
// feasible device has room.
func (r *ranker) best() (int32, bool) {
	lazy := len(r.gp.spec.distinctProps) > 0
	r.last = -1
	var bestTotal int64
	var bestDi int32
	for bi := range r.buckets {
		b := &r.buckets[bi]
		for len(b.heap) > 0 {
			if lazy && r.p.distinctReason(r.gp, b.heap[0].di) != "" {
				b.pop()
				continue
			}
			if b.heap[0].di == r.p.avoid && r.held < 0 {
				r.held, r.heldEntry = bi, b.heap[0]
				b.pop()
				continue
			}
			break
		}
		if len(b.heap) == 0 {
			continue
		}
		top := b.heap[0]
		total := top.key + r.spreadKey(b)
		if r.last < 0 || total > bestTotal || (total == bestTotal && top.di < bestDi) {
			r.last, bestTotal, bestDi = bi, total, top.di
		}
	}
	return bestDi, r.last >= 0
}

// placed updates the ranking after an instance was placed on the device best
// returned.
func (r *ranker) placed(di int32) {
	b := &r.buckets[r.last]
	for k := range r.spreads {
		r.spreads[k].count(b.values[k])
	}
	if r.gp.spec.distinctHosts || r.p.fitReason(r.gp, di) != "" {
		b.pop()
		return
	}
	top := &b.heap[0]
	top.key = r.p.binPack.key(capacity(r.p.devs[di]), r.p.used[di].add(r.gp.spec.demand.res)) + top.aff
	siftDown(b.heap, 0)
}

// spreadKey is the spread scorer's share of the score of the devices of a
// bucket: the spreads' scores weighted by their relative weights.
func (r *ranker) spreadKey(b *bucket) int64 {
	if len(r.spreads) == 0 {
		return 0
	}
	sum := 0.0
	for k := range r.spreads {
		sum += r.spreads[k].relWeight * r.spreads[k].score(b.values[k])
	}
	return quantize(sum)
}

// id returns the value id of a device's attribute, assigning new ids as
// values are first seen; feasible says the device is feasible for the group.
func (s *spreadState) id(p *planner, di int32, total float64, feasible bool) int32 {
	id := s.valueOf[di]
	if id == -2 {
		id = -1
		if v, set := s.spec.attr.value(p.devs[di]); set {
			var known bool
			if id, known = s.ids[v]; !known {
				id = int32(len(s.counts))
				s.ids[v] = id
				s.counts = append(s.counts, 0)
				s.feasible = append(s.feasible, false)
				if s.spec.targets != nil {
					pct, listed := s.spec.targets[v]
					s.targeted = append(s.targeted, listed)
					s.desired = append(s.desired, float64(pct)/100*total)
				}
			}
		}
		s.valueOf[di] = id
	}
	if id >= 0 && feasible {
		s.feasible[id] = true
	}
	return id
}

// count adds one live instance on a value.
func (s *spreadState) count(id int32) {
	if id < 0 {
		return
	}
	c := s.counts[id]
	s.counts[id]++
	if s.spec.targets != nil {
		if !s.targeted[id] {
			s.rest++
		}
		return
	}
	if s.hist == nil || !s.feasible[id] {
		return // before initEven (counting the existing instances), or a value out of reach
	}
	s.hist[c]--
	s.hist[c+1]++
	if c == s.lo && s.hist[c] == 0 {
		s.lo = c + 1 // every other value was above the old minimum
	}
	s.hi = max(s.hi, c+1)
}

// initEven computes the lowest and highest counts of an even spread once
// every value is known.
func (s *spreadState) initEven() {
	if s.spec.targets != nil {
		return
	}
	s.hist = map[int]int{}
	first := true
	for id, c := range s.counts {
		if !s.feasible[id] {
			continue
		}
		s.hist[c]++
		if first {
			s.lo, s.hi, first = c, c, false
		}
		s.lo, s.hi = min(s.lo, c), max(s.hi, c)
	}
}

// score is the spread's score for one more instance on a value; see
// spreadScore.
func (s *spreadState) score(id int32) float64 {
	switch {
	case id < 0:
		return spreadScore(false, false, 0, 0, 0, 0)
	case s.spec.targets == nil:
		return spreadScore(false, true, s.counts[id], 0, s.lo, s.hi)
	case s.targeted[id]:
		return spreadScore(true, true, s.counts[id], s.desired[id], 0, 0)
	default:
		return spreadScore(true, true, s.rest, s.restWant, 0, 0)
	}
}

// restore puts back the device best set aside, once the placement that
// avoided it is made (or abandoned).
func (r *ranker) restore() {
	if r.held < 0 {
		return
	}
	b := &r.buckets[r.held]
	b.heap = append(b.heap, r.heldEntry)
	for i := len(b.heap) - 1; i > 0; {
		parent := (i - 1) / 2
		if !b.heap[i].better(b.heap[parent]) {
			break
		}
		b.heap[i], b.heap[parent] = b.heap[parent], b.heap[i]
		i = parent
	}
	r.held = -1
}

func (b *bucket) pop() {
	h := b.heap
	last := len(h) - 1
	h[0] = h[last]
	b.heap = h[:last]
	siftDown(b.heap, 0)
}

func siftDown(h []heapEntry, i int) {
	for {
		best := i
		if l := 2*i + 1; l < len(h) && h[l].better(h[best]) {
			best = l
		}
		if r := 2*i + 2; r < len(h) && h[r].better(h[best]) {
			best = r
		}
		if best == i {
			return
		}
		h[i], h[best] = h[best], h[i]
		i = best
	}
}
