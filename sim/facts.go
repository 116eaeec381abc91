package sim

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
)

// deviceFacts are the facts a simulated device reports instead of the host's.
type deviceFacts struct {
	Arch     string
	MemoryMB int
	CPUCores int
	CPUMHz   int // total over the cores
	Labels   map[string]string
}

// factsFor varies the facts by device: architectures in the mix of a mixed
// fleet (amd64 40 %, arm64 35 %, arm 15 %, riscv64 10 %), 512 to 8192 MB of
// memory with cores to match, 1.0 to 2.4 GHz per core, and labels site
// (s0..s9, round robin by index) and model (m0..m3). The same id and seed
// give the same facts, so a restarted simulator describes the same fleet.
func factsFor(id string, index int, seed uint64) deviceFacts {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	r := rand.New(rand.NewPCG(h.Sum64(), seed))
	var f deviceFacts
	switch p := r.IntN(100); {
	case p < 40:
		f.Arch = "amd64"
	case p < 75:
		f.Arch = "arm64"
	case p < 90:
		f.Arch = "arm"
	default:
		f.Arch = "riscv64"
	}
	mem := []int{512, 1024, 2048, 4096, 8192}
	cores := []int{1, 2, 2, 4, 8}
	i := r.IntN(len(mem))
	f.MemoryMB, f.CPUCores = mem[i], cores[i]
	f.CPUMHz = f.CPUCores * (1000 + 200*r.IntN(8))
	f.Labels = map[string]string{
		"site":  fmt.Sprintf("s%d", index%10),
		"model": fmt.Sprintf("m%d", r.IntN(4)),
	}
	return f
}
