package dashboard

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, srv *httptest.Server, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestHandlerServesPageAndConfig(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(Config{WSPort: 1884, TopicRoot: "acme/prod"}))
	t.Cleanup(srv.Close)

	res, body := get(t, srv, "/", nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %s", res.Status)
	}
	for k, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-cache",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := res.Header.Get(k); got != want {
			t.Errorf("GET / %s = %q, want %q", k, got, want)
		}
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "connect-src 'self' ws:") {
		t.Errorf("GET / Content-Security-Policy = %q", csp)
	}
	for _, want := range []string{`<script src="vendor/mqtt.min.js"`, `<script type="module" src="js/main.js">`, `data-testid="connection"`} {
		if !strings.Contains(body, want) {
			t.Errorf("index.html lacks %s", want)
		}
	}
	// No external resources: every src and href is relative or a fragment.
	for _, bad := range []string{`src="http`, `href="http`, `src="//`, `href="//`, "@import"} {
		if strings.Contains(body, bad) {
			t.Errorf("index.html loads something from elsewhere: %s", bad)
		}
	}

	res, body = get(t, srv, "/config.json", nil)
	if res.StatusCode != http.StatusOK || res.Header.Get("Cache-Control") != "no-cache" || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /config.json: %s, Cache-Control %q, Content-Type %q", res.Status, res.Header.Get("Cache-Control"), res.Header.Get("Content-Type"))
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(body), &cfg); err != nil {
		t.Fatalf("config.json %q: %v", body, err)
	}
	if cfg["ws_port"] != float64(1884) || cfg["topic_root"] != "acme/prod" || cfg["ws_tls"] != false || len(cfg) != 3 {
		t.Errorf("config.json = %s", body)
	}
}

func TestHandlerSaysWhenTheWebSocketListenerIsTLS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(Config{WSPort: 8884, WSTLS: true}))
	t.Cleanup(srv.Close)

	_, body := get(t, srv, "/config.json", nil)
	if strings.TrimSpace(body) != `{"ws_port":8884,"topic_root":"tether","ws_tls":true}` {
		t.Errorf("config.json with WSTLS = %s", body)
	}
}

func TestHandlerAssets(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(Config{WSPort: 1}))
	t.Cleanup(srv.Close)

	for path, ctype := range map[string]string{
		"/index.html":              "text/html; charset=utf-8",
		"/style.css":               "text/css; charset=utf-8",
		"/js/main.js":              "text/javascript; charset=utf-8",
		"/js/model.js":             "text/javascript; charset=utf-8",
		"/vendor/mqtt.min.js":      "text/javascript; charset=utf-8",
		"/favicon.svg":             "image/svg+xml",
		"/js/../style.css":         "text/css; charset=utf-8",
		"/js/./dom.js":             "text/javascript; charset=utf-8",
		"/vendor/../js/conn.js":    "text/javascript; charset=utf-8",
		"/../../etc/../index.html": "text/html; charset=utf-8",
	} {
		res, body := get(t, srv, path, nil)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", path, res.Status)
			continue
		}
		if got := res.Header.Get("Content-Type"); got != ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", path, got, ctype)
		}
		if len(body) == 0 {
			t.Errorf("GET %s: empty body", path)
		}
	}
	for _, path := range []string{"/nope", "/js/", "/static/index.html", "/dashboard.go", "/vendor"} {
		if res, _ := get(t, srv, path, nil); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, res.Status)
		}
	}
}

func TestHandlerRevalidatesWithETag(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(Config{WSPort: 1884}))
	t.Cleanup(srv.Close)

	res, body := get(t, srv, "/vendor/mqtt.min.js", nil)
	etag := res.Header.Get("ETag")
	if etag == "" || len(body) < 100_000 {
		t.Fatalf("ETag %q, %d bytes", etag, len(body))
	}
	res, body = get(t, srv, "/vendor/mqtt.min.js", map[string]string{"If-None-Match": etag})
	if res.StatusCode != http.StatusNotModified || body != "" {
		t.Fatalf("revalidation: %s with %d bytes, want 304 and none", res.Status, len(body))
	}
	res, _ = get(t, srv, "/", map[string]string{"If-None-Match": `"other"`})
	if res.StatusCode != http.StatusOK {
		t.Fatalf("stale ETag: %s, want 200", res.Status)
	}
}

func TestHandlerDefaultsAndMethods(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(Handler(Config{}))
	t.Cleanup(srv.Close)

	_, body := get(t, srv, "/config.json", nil)
	if strings.TrimSpace(body) != `{"ws_port":0,"topic_root":"tether","ws_tls":false}` {
		t.Errorf("config.json with zero Config = %s", body)
	}
	res, err := srv.Client().Post(srv.URL+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: %s, Allow %q", res.Status, res.Header.Get("Allow"))
	}
	req, _ := http.NewRequest(http.MethodHead, srv.URL+"/", nil)
	res, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK || res.ContentLength <= 0 {
		t.Errorf("HEAD /: %s, Content-Length %d", res.Status, res.ContentLength)
	}
}
