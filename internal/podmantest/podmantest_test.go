package podmantest_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/tether-edge/tether/internal/podmantest"
)

func TestSetup(t *testing.T) {
	t.Parallel()
	socket, image := podmantest.Setup(t)
	// Through the test's own service, as the drivers use it.
	out, err := exec.Command("podman", "--remote", "--url", socket, "run", "--rm", image,
		"sh", "-c", "for a in sleep httpd wget nc printenv; do test -x /bin/$a && echo $a; done; cat /www/index.html").CombinedOutput()
	if err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	want := "sleep\nhttpd\nwget\nnc\nprintenv\nhello from tether\n"
	if string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

func TestNewDeviceCleansUp(t *testing.T) {
	t.Parallel()
	_, image := podmantest.Setup(t)
	var device string
	t.Run("leaves a container", func(t *testing.T) {
		device = podmantest.NewDevice(t)
		out, err := exec.Command("podman", "create", "--label", "tether.device="+device, image, "sleep", "60").CombinedOutput()
		if err != nil {
			t.Fatalf("podman create: %v\n%s", err, out)
		}
	})
	out, err := exec.Command("podman", "ps", "-aq", "--filter", "label=tether.device="+device).Output()
	if err != nil {
		t.Fatal(err)
	}
	if ids := strings.Fields(string(out)); len(ids) != 0 {
		t.Errorf("containers of %s left after cleanup: %v", device, ids)
	}
}
