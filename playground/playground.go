// Package playground owns fleetgraph's in-browser GraphQL IDE: a GraphiQL page
// and every file it loads, embedded in the binary so that the playground works
// on a machine without internet access.
//
// The page runs queries and mutations over HTTP POST to the GraphQL endpoint
// and subscriptions over a websocket at the same path with the
// graphql-transport-ws protocol. Headers typed into GraphiQL's headers editor
// (such as {"Authorization": "Bearer <jwt>"}) are sent with every HTTP request
// and, because browsers cannot set headers on a websocket, as the payload of
// the websocket's connection_init message.
//
// Handler serves two kinds of path relative to where it is mounted:
//
//	/                           the HTML page
//	/playground/assets/{file}   the embedded scripts and style sheets
//
// Mounted at the root of a server, that is:
//
//	h := playground.Handler("fleetgraph", "/graphql")
//	mux.Handle("GET /{$}", h)
//	mux.Handle("GET /playground/", h)
//
// The page refers to its assets by relative URLs, so it also works mounted
// under a prefix with http.StripPrefix, provided the page is reached with a
// trailing slash.
//
// The third-party files come from npm at pinned versions; assets/update.sh
// reproduces them and assets/VERSIONS names the versions and licenses.
package playground

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"
)

// AssetPrefix is the path, relative to where Handler is mounted, under which
// the page's scripts and style sheets are served.
const AssetPrefix = "/playground/assets/"

// assetFiles holds what the page loads: the pinned third-party bundles and
// our own playground.js and playground.css. update.sh, VERSIONS and the
// licenses sit beside them but are not served.
//
//go:embed assets/*.js assets/*.css
var assetFiles embed.FS

//go:embed index.html
var indexHTML string

// pageTemplate is parsed once; a parse error is a defect in index.html that
// every test run would show, so it panics at package initialisation.
var pageTemplate = template.Must(template.New("index.html").Parse(indexHTML))

// immutableMaxAge is how long browsers may keep an asset requested with its
// current version in the URL: the URL changes whenever the content does.
const immutableMaxAge = 365 * 24 * time.Hour

// contentTypes maps the extensions of the embedded files to the types they are
// served with, so the answer does not depend on the host's MIME tables.
var contentTypes = map[string]string{
	".js":  "text/javascript; charset=utf-8",
	".css": "text/css; charset=utf-8",
}

// asset is one embedded file, ready to serve.
type asset struct {
	name        string
	contentType string
	body        []byte
	// version is a prefix of the SHA-256 of body. The page requests the asset
	// with ?v=version, which makes the URL safe to cache as immutable.
	version string
	// gzipped compresses body the first time a client that accepts gzip asks
	// for it, so start-up does not pay for assets nobody loads.
	gzipped func() []byte
}

// handler serves the page and its assets; see the package documentation.
type handler struct {
	page    []byte   // the page without default headers
	data    pageData // what the page is rendered from, for pages with them
	assets  map[string]*asset
	connect []string // connect-src sources besides 'self' and the request's own ws(s) origin
	// headers makes the default headers of a page (nil: none), which
	// carry a credential: such a handler's pages are never stored by
	// caches, and only loopback requests get them (loopbackRequest).
	headers func() (string, error)
}

// Handler returns the playground for a GraphQL endpoint. Title is the page's
// title. Endpoint is the URL of the GraphQL endpoint, normally a path on the
// same server such as "/graphql"; an absolute http(s) URL also works and is
// then allowed by the page's Content-Security-Policy. The websocket URL is the
// endpoint with its scheme changed to ws: or wss:, following the page's own.
//
// See the package documentation for the paths it serves and how to mount it.
func Handler(title, endpoint string, opts ...Option) http.Handler {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	assets, err := loadAssets(assetFiles)
	if err != nil {
		// The files are embedded at build time, so this cannot fail at run time
		// in a binary whose tests passed.
		panic(fmt.Sprintf("playground: %v", err))
	}
	data := pageData{Title: title, Endpoint: endpoint, assets: assets}
	page, err := renderPage(data)
	if err != nil {
		panic(fmt.Sprintf("playground: %v", err))
	}
	return &handler{page: page, data: data, assets: assets, connect: endpointSources(endpoint), headers: o.defaultHeaders}
}

// Option adjusts the playground page.
type Option func(*options)

type options struct{ defaultHeaders func() (string, error) }

// WithDefaultHeaders fills GraphiQL's headers editor with headers (a JSON
// object such as {"Authorization": "Bearer ..."}) whenever the page is
// opened without a headers parameter, so a development server's playground
// opens ready to use. The page then carries a credential, so it is served
// with Cache-Control: no-store, and with the headers only to a request
// from this machine for a loopback host (localhost, 127.0.0.1, [::1]): a
// page of another site whose name was rebound to this server's address
// (DNS rebinding) reads the page with its own Host, and a client from
// another machine is not this machine's developer. Others get the page
// without them. Only a development server should use this.
func WithDefaultHeaders(headers string) Option {
	return WithDefaultHeadersFunc(func() (string, error) { return headers, nil })
}

// WithDefaultHeadersFunc is WithDefaultHeaders with headers made for each
// page served, such as a token minted then: a server left running longer
// than a token lives still serves a valid one. A page whose headers cannot
// be made is served without them.
func WithDefaultHeadersFunc(headers func() (string, error)) Option {
	return func(o *options) { o.defaultHeaders = headers }
}

// loadAssets reads every embedded asset and computes its version.
func loadAssets(files fs.FS) (map[string]*asset, error) {
	entries, err := fs.ReadDir(files, "assets")
	if err != nil {
		return nil, fmt.Errorf("listing embedded assets: %w", err)
	}
	assets := make(map[string]*asset, len(entries))
	for _, entry := range entries {
		name := entry.Name()
		contentType, ok := contentTypes[path.Ext(name)]
		if entry.IsDir() || !ok {
			continue
		}
		body, err := fs.ReadFile(files, "assets/"+name)
		if err != nil {
			return nil, fmt.Errorf("reading embedded asset %s: %w", name, err)
		}
		sum := sha256.Sum256(body)
		assets[name] = &asset{
			name:        name,
			contentType: contentType,
			body:        body,
			version:     hex.EncodeToString(sum[:8]),
			gzipped:     sync.OnceValue(func() []byte { return gzipBytes(body) }),
		}
	}
	return assets, nil
}

// gzipBytes compresses b. Writing to a bytes.Buffer cannot fail.
func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// pageData is what index.html is rendered with.
type pageData struct {
	Title          string
	Endpoint       string
	DefaultHeaders string
	assets         map[string]*asset
}

// Asset returns the relative URL of an embedded asset, with its version so
// that it can be cached as immutable. An unknown name fails the rendering,
// which keeps index.html and the embedded files in step.
func (d pageData) Asset(name string) (string, error) {
	a, ok := d.assets[name]
	if !ok {
		return "", fmt.Errorf("index.html refers to asset %q, which is not embedded: add it to playground/assets", name)
	}
	return strings.TrimPrefix(AssetPrefix, "/") + a.name + "?v=" + a.version, nil
}

// renderPage renders the HTML page: once without default headers, and for
// each request that gets them.
func renderPage(data pageData) ([]byte, error) {
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("rendering index.html: %w", err)
	}
	return buf.Bytes(), nil
}

// endpointSources returns the extra connect-src sources an absolute endpoint
// URL needs: its origin and the matching websocket origin. A relative endpoint
// is covered by the request's own origin and needs none.
func endpointSources(endpoint string) []string {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || !validHost.MatchString(u.Host) {
		return nil
	}
	switch u.Scheme {
	case "http":
		return []string{"http://" + u.Host, "ws://" + u.Host}
	case "https":
		return []string{"https://" + u.Host, "wss://" + u.Host}
	}
	return nil
}

// validHost matches a host with an optional port, including bracketed IPv6,
// and nothing that could end a CSP source list such as ';' or whitespace.
var validHost = regexp.MustCompile(`^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]+)?$`)

// ServeHTTP serves the page at "/" and the assets under AssetPrefix.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch {
	case r.URL.Path == "/":
		h.servePage(w, r)
	case strings.HasPrefix(r.URL.Path, AssetPrefix):
		a, ok := h.assets[strings.TrimPrefix(r.URL.Path, AssetPrefix)]
		if !ok {
			http.NotFound(w, r)
			return
		}
		serveAsset(w, r, a)
	default:
		http.NotFound(w, r)
	}
}

// servePage writes the HTML page with a Content-Security-Policy that allows
// only this server's scripts, styles and connections.
func (h *handler) servePage(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Content-Security-Policy", h.contentSecurityPolicy(r.Host))
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	// The page names asset versions, so it must be revalidated to pick up new
	// ones after an upgrade; one that may carry default headers is not kept.
	if h.headers != nil {
		hdr.Set("Cache-Control", "no-store")
	} else {
		hdr.Set("Cache-Control", "no-cache")
	}
	page := h.page
	if h.headers != nil && loopbackRequest(r) {
		if headers, err := h.headers(); err == nil {
			data := h.data
			data.DefaultHeaders = headers
			if p, err := renderPage(data); err == nil {
				page = p
			}
		}
	}
	http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(page))
}

// loopbackRequest reports whether r names a loopback host (localhost, or a
// loopback address such as 127.0.0.1 or [::1], with any port) and comes
// from a loopback address: a browser on this machine that opened the page
// as such. A DNS-rebound name reaches the same listener with its own Host;
// a Host header set by hand from another machine fails the second test.
func loopbackRequest(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if !strings.EqualFold(host, "localhost") {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return false
		}
	}
	peer, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		peer = r.RemoteAddr
	}
	ip := net.ParseIP(peer)
	return ip != nil && ip.IsLoopback()
}

// contentSecurityPolicy builds the page's policy. 'self' in connect-src does
// not cover ws: and wss: in older browsers, so the request's own host is
// listed with both websocket schemes; a Host header that is not a plain host
// and port is left out rather than copied into the header.
//
// Fonts and a few images in GraphiQL's style sheet are data: URLs. Styles need
// 'unsafe-inline' because GraphiQL's dialogs and tooltips (Radix UI) insert
// <style> elements at run time; scripts need nothing beyond 'self'.
func (h *handler) contentSecurityPolicy(host string) string {
	connect := []string{"'self'"}
	if validHost.MatchString(host) {
		connect = append(connect, "ws://"+host, "wss://"+host)
	}
	connect = append(connect, h.connect...)
	return strings.Join([]string{
		"default-src 'none'",
		"script-src 'self'",
		"style-src 'self' 'unsafe-inline'",
		"img-src 'self' data:",
		"font-src 'self' data:",
		"connect-src " + strings.Join(connect, " "),
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
	}, "; ")
}

// serveAsset writes one embedded file with its ETag, gzip-compressed when the
// client accepts it, and as immutable when requested with its current version.
func serveAsset(w http.ResponseWriter, r *http.Request, a *asset) {
	hdr := w.Header()
	hdr.Set("Content-Type", a.contentType)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Add("Vary", "Accept-Encoding")
	if r.URL.Query().Get("v") == a.version {
		hdr.Set("Cache-Control", fmt.Sprintf("public, max-age=%d, immutable", int(immutableMaxAge.Seconds())))
	} else {
		hdr.Set("Cache-Control", "no-cache")
	}
	body, etag := a.body, `"`+a.version+`"`
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		// Each encoding is its own representation and needs its own ETag.
		body, etag = a.gzipped(), `"`+a.version+`-gzip"`
		hdr.Set("Content-Encoding", "gzip")
	}
	hdr.Set("ETag", etag)
	http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(body))
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip, honouring
// an explicit q=0 refusal.
func acceptsGzip(acceptEncoding string) bool {
	for part := range strings.SplitSeq(acceptEncoding, ",") {
		coding, params, _ := strings.Cut(part, ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		for param := range strings.SplitSeq(params, ";") {
			key, value, _ := strings.Cut(param, "=")
			if strings.EqualFold(strings.TrimSpace(key), "q") {
				value = strings.TrimSpace(value)
				if strings.Trim(value, "0.") == "" {
					return false
				}
			}
		}
		return true
	}
	return false
}
