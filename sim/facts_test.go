package sim

import (
	"fmt"
	"testing"
)

func TestFactsVaryAndRepeat(t *testing.T) {
	t.Parallel()
	const n = 2000
	arch := map[string]int{}
	mem := map[int]int{}
	sites, models := map[string]int{}, map[string]int{}
	for i := range n {
		id := fmt.Sprintf("sim-%05d", i)
		f := factsFor(id, i, 1)
		if g := factsFor(id, i, 1); fmt.Sprint(g) != fmt.Sprint(f) {
			t.Fatalf("%s: facts differ between calls: %+v and %+v", id, f, g)
		}
		arch[f.Arch]++
		mem[f.MemoryMB]++
		sites[f.Labels["site"]]++
		models[f.Labels["model"]]++
		if f.CPUCores < 1 || f.CPUMHz < 1000*f.CPUCores || f.CPUMHz > 2400*f.CPUCores {
			t.Errorf("%s: %d cores, %d MHz", id, f.CPUCores, f.CPUMHz)
		}
	}
	// The mix is 40/35/15/10 %; allow for chance.
	for a, want := range map[string]int{"amd64": 800, "arm64": 700, "arm": 300, "riscv64": 200} {
		if got := arch[a]; got < want*3/4 || got > want*5/4 {
			t.Errorf("%s: %d of %d devices, want about %d", a, got, n, want)
		}
	}
	if len(mem) != 5 || len(sites) != 10 || len(models) != 4 {
		t.Errorf("%d memory sizes, %d sites, %d models; want 5, 10, 4", len(mem), len(sites), len(models))
	}
	if sites["s3"] != n/10 {
		t.Errorf("site s3 has %d devices, want %d (round robin)", sites["s3"], n/10)
	}
	if fmt.Sprint(factsFor("sim-00001", 1, 1)) == fmt.Sprint(factsFor("sim-00001", 1, 2)) &&
		fmt.Sprint(factsFor("sim-00002", 2, 1)) == fmt.Sprint(factsFor("sim-00002", 2, 2)) {
		t.Error("the seed changes nothing")
	}
}
