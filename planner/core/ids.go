package core

import (
	"cmp"
	"hash/maphash"
	"slices"
	"strings"
)

// idSet knows the allocation ids in use during one Compute: the snapshot's
// and those placed. A million snapshot ids are too many for a map to be
// cheap on every plan, so they are kept as a sorted array of 64-bit hashes
// (sorted by a radix sort), where duplicates sit next to each other and a
// lookup is a binary search confirmed by comparing the strings. Placed ids,
// fewer, go to a map. Results never depend on the (random) hash seed: it
// only decides which ids are compared.
type idSet struct {
	seed   maphash.Seed
	allocs []Alloc
	hashes []hashedID // by hash
	placed map[string]struct{}
}

type hashedID struct {
	h uint64
	i int32 // index in allocs
}

func newIDSet(allocs []Alloc) *idSet {
	s := &idSet{seed: maphash.MakeSeed(), allocs: allocs, hashes: make([]hashedID, len(allocs))}
	for i := range allocs {
		s.hashes[i] = hashedID{h: maphash.String(s.seed, allocs[i].ID), i: int32(i)}
	}
	radixSort(s.hashes)
	return s
}

// duplicates returns, for every allocation whose id another one shares, the
// index of the one that keeps the id: the first in allocOrder (of equal
// ones, the first in the snapshot). It is nil
// when ids are unique, as they are when they come from a store keyed by id.
func (s *idSet) duplicates() map[int32]int32 {
	var dup map[int32]int32
	h := s.hashes
	for lo := 0; lo < len(h); {
		hi := lo + 1
		for hi < len(h) && h[hi].h == h[lo].h {
			hi++
		}
		if hi-lo > 1 {
			// Same hash: group the indices by id (all equal, unless the
			// hash collides), and in each group find the first.
			run := make([]int32, 0, hi-lo)
			for _, x := range h[lo:hi] {
				run = append(run, x.i)
			}
			for len(run) > 0 {
				id := s.allocs[run[0]].ID
				var same, rest []int32
				for _, i := range run {
					if s.allocs[i].ID == id {
						same = append(same, i)
					} else {
						rest = append(rest, i)
					}
				}
				if len(same) > 1 {
					first := slices.MinFunc(same, func(a, b int32) int {
						return cmp.Or(allocOrder(&s.allocs[a], &s.allocs[b]), cmp.Compare(a, b))
					})
					if dup == nil {
						dup = map[int32]int32{}
					}
					for _, i := range same {
						dup[i] = first
					}
				}
				run = rest
			}
		}
		lo = hi
	}
	return dup
}

// has reports whether id is in use.
func (s *idSet) has(id string) bool {
	if _, ok := s.placed[id]; ok {
		return true
	}
	h := maphash.String(s.seed, id)
	k, _ := slices.BinarySearchFunc(s.hashes, h, func(x hashedID, h uint64) int {
		switch {
		case x.h < h:
			return -1
		case x.h > h:
			return 1
		}
		return 0
	})
	for ; k < len(s.hashes) && s.hashes[k].h == h; k++ {
		if strings.Compare(s.allocs[s.hashes[k].i].ID, id) == 0 {
			return true
		}
	}
	return false
}

// addPlaced records the id of a new allocation.
func (s *idSet) addPlaced(id string) {
	if s.placed == nil {
		s.placed = map[string]struct{}{}
	}
	s.placed[id] = struct{}{}
}

// radixSort sorts by hash, least significant digit first. The digit width
// follows the input's size, as measured on a 2-core x86 machine: for up to
// 128k ids, 11 bits (6 passes over a count array that stays small next to
// the input), up to 512k 16 bits (4 passes), beyond that 8 bits (8 passes
// that stay in cache).
func radixSort(a []hashedID) {
	if len(a) < 256 {
		slices.SortFunc(a, func(x, y hashedID) int { return cmp.Compare(x.h, y.h) })
		return
	}
	bits := uint(16)
	switch {
	case len(a) < 1<<17:
		bits = 11
	case len(a) >= 1<<19:
		bits = 8
	}
	buf := make([]hashedID, len(a))
	count := make([]int, 1<<bits)
	mask := uint64(1)<<bits - 1
	src, dst := a, buf
	for shift := uint(0); shift < 64; shift += bits {
		clear(count)
		for _, x := range src {
			count[(x.h>>shift)&mask]++
		}
		sum := 0
		for d, c := range count {
			count[d] = sum
			sum += c
		}
		for _, x := range src {
			d := (x.h >> shift) & mask
			dst[count[d]] = x
			count[d]++
		}
		src, dst = dst, src
	}
	if &src[0] != &a[0] { // an odd number of passes
		copy(a, src)
	}
}
