package fake

import (
	"math"
	"math/rand/v2"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/tether-edge/tether/edged/driver"
)

// Forever is the outcome of an instance that runs until stopped.
var Forever = Outcome{}

// ShellBehavior reads the task's command as a tiny shell script, so the job
// specs written for Podman (busybox) or exec behave alike on the fake:
//
//	["sleep", "3600"]                    exits 0 after an hour
//	["sh", "-c", "sleep 0.5; exit $CODE"] exits with Env CODE after 0.5s
//	["/bin/sh", "-c", "exit 3"]           exits 3 at once
//
// Statements are separated by ';', '&&' or newlines; it understands sleep
// (seconds, or a Go duration such as 2s; "infinity"), exit, true and false,
// and expands $VAR and ${VAR} from the task's Env. An empty command, or any
// statement it does not understand, runs forever: the safe guess for a
// service.
func ShellBehavior(spec driver.Spec) Outcome {
	cmd := spec.Task.Config.Command
	if len(cmd) == 0 {
		return Forever
	}
	script := strings.Join(cmd, " ")
	if len(cmd) >= 3 && path.Base(cmd[0]) == "sh" && cmd[1] == "-c" {
		script = cmd[2]
	}
	script = os.Expand(script, func(k string) string { return spec.Task.Env[k] })
	script = strings.NewReplacer("&&", ";", "\n", ";").Replace(script)

	var after time.Duration
	status := 0
	for _, stmt := range strings.Split(script, ";") {
		words := strings.Fields(stmt)
		if len(words) == 0 {
			continue
		}
		switch path.Base(words[0]) {
		case "sleep":
			if len(words) != 2 {
				return Forever
			}
			d, ok := parseSleep(words[1])
			if !ok {
				return Forever
			}
			after += d
			status = 0
		case "exit":
			code := status
			if len(words) > 1 {
				n, err := strconv.Atoi(words[1])
				if err != nil {
					return Forever
				}
				code = n & 0xff // as a shell truncates it
			}
			return Outcome{Exits: true, After: after, Code: code}
		case "true", ":":
			status = 0
		case "false":
			status = 1
		default:
			return Forever
		}
	}
	return Outcome{Exits: true, After: after, Code: status}
}

// parseSleep reads sleep's argument: seconds (fractions allowed), a Go
// duration, or "infinity". ok is false for anything else and for infinity,
// which both mean "never exits".
func parseSleep(s string) (time.Duration, bool) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f > float64(math.MaxInt64/int64(time.Second)) {
			return 0, false
		}
		return time.Duration(f * float64(time.Second)), true
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, true
	}
	return 0, false
}

// Crashing wraps base so that a share rate (0 to 1) of the instances that
// base would run forever crash instead: each exits, at a random time up to
// within after its start (a second when within is 0), with a code drawn
// from codes (1 when empty). Instances base lets exit by themselves are
// left alone. The random draws use math/rand/v2's global source, which is
// safe for concurrent use.
func Crashing(base Behavior, rate float64, within time.Duration, codes []int) Behavior {
	if base == nil {
		base = ShellBehavior
	}
	if rate <= 0 {
		return base
	}
	if within <= 0 {
		within = time.Second
	}
	if len(codes) == 0 {
		codes = []int{1}
	}
	return func(spec driver.Spec) Outcome {
		o := base(spec)
		if o.Exits || rand.Float64() >= rate {
			return o
		}
		return Outcome{Exits: true, After: rand.N(within) + 1, Code: codes[rand.IntN(len(codes))]}
	}
}
