package cli

import (
	"fmt"
	"strings"

	"github.com/tether-edge/tether/protocol"
)

// ParseLabels reads repeated KEY=VALUE flags.
func ParseLabels(in []string) (map[string]string, error) {
	out := map[string]string{}
	for _, l := range in {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("--label %q: want KEY=VALUE", l)
		}
		if err := protocol.ValidateID(k); err != nil {
			return nil, fmt.Errorf("--label %q: key: %w", l, err)
		}
		out[k] = v
	}
	return out, nil
}
