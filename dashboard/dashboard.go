package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/tether-edge/tether/protocol"
)

//go:embed static
var static embed.FS

// Config is what the page needs to know about the server it came from.
type Config struct {
	// WSPort is the port of the broker's WebSocket listener. The page
	// connects to ws://{the host it was loaded from}:{WSPort}, so it works
	// whichever interface it was opened on. 0 means there is none; the page
	// then says so instead of connecting.
	WSPort int
	// WSTLS says that the WebSocket listener speaks TLS: the page then
	// connects with wss:// even when the page itself came over plain http
	// (from 127.0.0.1, say). The listener's certificate must be valid for
	// the host name the page was opened with, and the browser must trust its
	// CA (see README.md, Signing in). The page also uses wss://
	// whenever it was itself loaded over https, as browsers refuse ws://
	// from an https page.
	WSTLS bool
	// TopicRoot is the topic root, e.g. "tether"; empty means
	// protocol.DefaultRoot.
	TopicRoot string
}

// pageConfig is the body of /config.json.
type pageConfig struct {
	WSPort    int    `json:"ws_port"`
	TopicRoot string `json:"topic_root"`
	WSTLS     bool   `json:"ws_tls"`
}

// asset is one embedded file, read once with its validator.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// contentTypes is fixed here rather than taken from the host's mime tables,
// which differ between machines (a wrong type for a module script makes the
// browser refuse it).
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".json": "application/json",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
}

// contentSecurityPolicy allows only this origin's own files, WebSocket
// connections to any host (the broker listens on another port, which 'self'
// does not cover), and blob: workers: MQTT.js runs its keepalive timer in a
// worker made from a blob, because browsers throttle timers in background
// tabs to once a minute, longer than the keepalive.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; worker-src 'self' blob:; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the dashboard: the page at /, its files below it, and
// /config.json. Every response says no-cache: the files are not
// fingerprinted, so the browser must revalidate them (a strong ETag makes
// that a 304) and always sees the assets of the server it talks to.
// The handler is safe for concurrent use and holds no state but the assets.
func Handler(cfg Config) http.Handler {
	root := cfg.TopicRoot
	if root == "" {
		root = protocol.DefaultRoot
	}
	cfgBody, _ := json.Marshal(pageConfig{WSPort: cfg.WSPort, TopicRoot: root, WSTLS: cfg.WSTLS})
	assets := loadAssets()
	assets["/config.json"] = newAsset(append(cfgBody, '\n'), contentTypes[".json"])
	return &handler{assets: assets}
}

type handler struct {
	assets map[string]asset
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := path.Clean("/" + r.URL.Path)
	if p == "/" {
		p = "/index.html"
	}
	a, ok := h.assets[p]
	if !ok {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	if strings.HasSuffix(p, ".html") {
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
	}
	// ServeContent answers If-None-Match with 304 and handles HEAD and
	// ranges; the zero modtime keeps Last-Modified out.
	http.ServeContent(w, r, p, time.Time{}, bytes.NewReader(a.body))
}

// loadAssets reads every embedded file into memory, keyed by URL path.
func loadAssets() map[string]asset {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the folder
	}
	out := map[string]asset{}
	err = fs.WalkDir(sub, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(sub, name)
		if err != nil {
			return err
		}
		ct, ok := contentTypes[path.Ext(name)]
		if !ok {
			ct = "application/octet-stream"
		}
		out["/"+name] = newAsset(body, ct)
		return nil
	})
	if err != nil {
		panic(err) // reading an embed.FS cannot fail
	}
	return out
}

func newAsset(body []byte, contentType string) asset {
	sum := sha256.Sum256(body)
	return asset{body: body, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
}
