package sim

import (
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// serve starts the status endpoint:
//
//	GET /status                     Status
//	GET /devices[?job=J&version=V]  []DeviceStatus
func (f *fleet) serve(addr string) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("status endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, f.status())
	})
	mux.HandleFunc("GET /devices", func(w http.ResponseWriter, r *http.Request) {
		var version uint64
		if v := r.URL.Query().Get("version"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				http.Error(w, "version: want a number", http.StatusBadRequest)
				return
			}
			version = n
		}
		writeJSON(w, f.deviceStatus(r.URL.Query().Get("job"), version))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr().String(), nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// percentiles of ds by the nearest-rank method.
func percentiles(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return s[max(i, 0)].Seconds()
	}
	return Percentiles{Count: len(s), P50: rank(50), P95: rank(95), P99: rank(99), Max: s[len(s)-1].Seconds()}
}

// Summarize returns the percentiles of ds, for drivers that collect
// durations from several simulators.
func Summarize(ds []time.Duration) Percentiles { return percentiles(ds) }
