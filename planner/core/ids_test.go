package core

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

func TestIDSet(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.SampledFrom([]int{0, 3, 40, 700}).Draw(t, "allocations")
		pool := rapid.IntRange(1, 2*n+1).Draw(t, "distinct ids")
		allocs := make([]Alloc, n)
		for i := range allocs {
			allocs[i] = Alloc{
				ID:     fmt.Sprintf("id-%d", rapid.IntRange(0, pool-1).Draw(t, "id")),
				Job:    rapid.SampledFrom([]string{"a", "b"}).Draw(t, "job"),
				Index:  rapid.IntRange(0, 2).Draw(t, "index"),
				Device: rapid.SampledFrom([]string{"x", "y"}).Draw(t, "device"),
			}
		}
		s := newIDSet(allocs)
		// Reference: the first of each id in allocOrder.
		first := map[string]int32{}
		count := map[string]int{}
		for i := range allocs {
			id := allocs[i].ID
			count[id]++
			if w, ok := first[id]; !ok || allocOrder(&allocs[i], &allocs[w]) < 0 {
				first[id] = int32(i)
			}
		}
		dup := s.duplicates()
		for i := range allocs {
			id := allocs[i].ID
			w, isDup := dup[int32(i)]
			switch {
			case count[id] == 1 && isDup:
				t.Fatalf("unique %s reported as duplicate", id)
			case count[id] > 1 && (!isDup || w != first[id]):
				t.Fatalf("%s: first %d, reported %d (%v)", id, first[id], w, isDup)
			}
			if !s.has(id) {
				t.Fatalf("%s not found", id)
			}
		}
		if s.has("id-none") {
			t.Fatal("found an id never added")
		}
		s.addPlaced("id-new")
		if !s.has("id-new") {
			t.Fatal("placed id not found")
		}
	})
}

// radixSort must agree with a comparison sort at every digit width.
func TestRadixSort(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 255, 256, 1000, 1<<17 - 1, 1 << 17, 1<<19 - 1, 1 << 19, 600000} {
		a := make([]hashedID, n)
		for i := range a {
			h := rng.Uint64()
			if i%7 == 0 {
				h &= 0xffff // many equal high digits
			}
			a[i] = hashedID{h: h, i: int32(i)}
		}
		want := slices.Clone(a)
		slices.SortStableFunc(want, func(x, y hashedID) int { return cmp.Compare(x.h, y.h) })
		radixSort(a)
		if n >= 256 && !slices.Equal(a, want) { // radix sorting is stable too
			t.Fatalf("n=%d: not sorted like a stable comparison sort", n)
		}
		if !slices.IsSortedFunc(a, func(x, y hashedID) int {
			if x.h < y.h {
				return -1
			} else if x.h > y.h {
				return 1
			}
			return 0
		}) {
			t.Fatalf("n=%d: not sorted", n)
		}
	}
}
