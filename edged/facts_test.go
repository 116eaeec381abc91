package edged

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDeviceResources(t *testing.T) {
	dev, usb := t.TempDir(), t.TempDir()
	for _, n := range []string{"nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"} {
		os.WriteFile(filepath.Join(dev, n), nil, 0o644)
	}
	for i, vp := range [][2]string{{"1D6B", "0002"}, {"1d6b", "0002"}, {"0403", "6001"}} {
		d := filepath.Join(usb, "1-"+string(rune('0'+i)))
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "idVendor"), []byte(vp[0]+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "idProduct"), []byte(vp[1]+"\n"), 0o644)
	}
	os.MkdirAll(filepath.Join(usb, "usb1-port1"), 0o755) // no ids: not a device
	got := deviceResources(dev, usb)
	want := map[string]int{"nvidia/gpu": 2, "usb/0403:6001": 1, "usb/1d6b:0002": 2}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for _, r := range got {
		if want[r.Name] != r.Count {
			t.Errorf("%s: %d, want %d", r.Name, r.Count, want[r.Name])
		}
	}
	if diskFreeMB(t.TempDir()) <= 0 {
		t.Error("no free disk reported for a temp dir")
	}
}
