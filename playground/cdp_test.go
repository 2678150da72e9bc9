package playground_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// This file holds just enough of a Chrome DevTools Protocol client to drive a
// headless chromium from tests: start the browser, open a tab, navigate,
// evaluate JavaScript and take a screenshot.

// browserStartTimeout bounds how long chromium may take to print its DevTools
// URL; a cold start on a small CI machine takes a few seconds.
const browserStartTimeout = 60 * time.Second

// devToolsURL matches the line chromium prints on stderr once its DevTools
// endpoint listens.
var devToolsURL = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

// browser is a running headless chromium and a CDP connection to it.
type browser struct {
	conn    *websocket.Conn
	mu      sync.Mutex // guards nextID, pending and readErr
	nextID  int64
	pending map[int64]chan cdpResponse
	readErr error
}

// cdpResponse is the reply to one CDP command.
type cdpResponse struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// cdpMessage is anything chromium sends: a reply has an ID, an event has a
// method. Events are not needed by these tests and are dropped.
type cdpMessage struct {
	ID int64 `json:"id"`
	cdpResponse
}

// stderrWatcher keeps chromium's stderr for failure messages and reports the
// DevTools URL once it appears.
type stderrWatcher struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	found chan string
	sent  bool
}

// Write implements io.Writer for exec.Cmd.Stderr.
func (w *stderrWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() < 1<<20 {
		w.buf.Write(p)
	}
	if m := devToolsURL.FindSubmatch(w.buf.Bytes()); m != nil && !w.sent {
		w.sent = true
		w.found <- string(m[1])
	}
	return len(p), nil
}

// String returns what chromium has written to stderr so far.
func (w *stderrWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// startBrowser starts headless chromium, or skips the test when it is not
// installed, and closes it when the test ends.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not on PATH; install it with `apt-get install chromium` to run the browser test")
	}
	profile := t.TempDir()

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, chromium,
		"--headless",
		"--no-sandbox",
		"--disable-gpu",
		"--disable-quic",
		"--disable-dev-shm-usage",
		"--no-first-run",
		"--no-default-browser-check",
		"--disable-background-networking",
		"--disable-component-update",
		"--disable-sync",
		"--window-size=1280,800",
		"--user-data-dir="+profile,
		"--remote-debugging-address=127.0.0.1",
		"--remote-debugging-port=0",
		"about:blank",
	)
	stderr := &stderrWatcher{found: make(chan string, 1)}
	cmd.Stderr = stderr
	// Chromium's helper processes may hold stderr open for a moment after the
	// browser process is killed; do not let Wait hang on them.
	cmd.WaitDelay = 10 * time.Second
	require.NoError(t, cmd.Start(), "starting chromium")

	var b *browser
	t.Cleanup(func() {
		if b != nil {
			// Browser.close lets chromium end its helper processes itself;
			// the context kill below is the fallback.
			closeCtx, closeCancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = b.call(closeCtx, "", "Browser.close", nil, nil)
			closeCancel()
			_ = b.conn.CloseNow()
		}
		exited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cancel()
			<-exited
		}
		cancel()
	})

	var wsURL string
	select {
	case wsURL = <-stderr.found:
	case <-time.After(browserStartTimeout):
		t.Fatalf("chromium printed no DevTools URL within %s; its stderr:\n%s", browserStartTimeout, stderr.String())
	}

	dialCtx, dialCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dialCancel()
	conn, _, err := websocket.Dial(dialCtx, wsURL, nil)
	require.NoError(t, err, "connecting to chromium's DevTools at %s", wsURL)
	// Screenshots and page dumps are far larger than the default 32 KiB.
	conn.SetReadLimit(64 << 20)

	b = &browser{conn: conn, pending: make(map[int64]chan cdpResponse)}
	go b.readLoop()
	return b
}

// readLoop hands each reply to the call waiting for it until the connection
// ends, then fails the calls still waiting.
func (b *browser) readLoop() {
	for {
		_, data, err := b.conn.Read(context.Background())
		if err != nil {
			b.mu.Lock()
			b.readErr = fmt.Errorf("reading from chromium's DevTools: %w", err)
			for id, ch := range b.pending {
				close(ch)
				delete(b.pending, id)
			}
			b.mu.Unlock()
			return
		}
		var msg cdpMessage
		if err := json.Unmarshal(data, &msg); err != nil || msg.ID == 0 {
			continue
		}
		b.mu.Lock()
		ch, ok := b.pending[msg.ID]
		delete(b.pending, msg.ID)
		b.mu.Unlock()
		if ok {
			ch <- msg.cdpResponse
		}
	}
}

// call sends one CDP command, to the browser when sessionID is empty or to an
// attached page otherwise, and decodes its result into result unless nil.
func (b *browser) call(ctx context.Context, sessionID, method string, params, result any) error {
	b.mu.Lock()
	if b.readErr != nil {
		b.mu.Unlock()
		return b.readErr
	}
	b.nextID++
	id := b.nextID
	ch := make(chan cdpResponse, 1)
	b.pending[id] = ch
	b.mu.Unlock()

	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if sessionID != "" {
		msg["sessionId"] = sessionID
	}
	data, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("encoding CDP %s: %w", method, err)
	}
	if err := b.conn.Write(ctx, websocket.MessageText, data); err != nil {
		return fmt.Errorf("sending CDP %s: %w", method, err)
	}

	select {
	case <-ctx.Done():
		b.mu.Lock()
		delete(b.pending, id)
		b.mu.Unlock()
		return fmt.Errorf("waiting for CDP %s: %w", method, ctx.Err())
	case resp, ok := <-ch:
		if !ok {
			b.mu.Lock()
			defer b.mu.Unlock()
			return fmt.Errorf("CDP %s got no reply: %w", method, b.readErr)
		}
		if resp.Error != nil {
			return fmt.Errorf("CDP %s failed: %d %s", method, resp.Error.Code, resp.Error.Message)
		}
		if result == nil {
			return nil
		}
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("decoding CDP %s result: %w", method, err)
		}
		return nil
	}
}

// tab is one browser tab attached with its own CDP session.
type tab struct {
	browser   *browser
	sessionID string
}

// pageProbes runs in every document before the page's own scripts, so the
// tests can see errors and Content-Security-Policy violations that the page
// would otherwise only log to its console.
const pageProbes = `
window.__problems = [];
window.addEventListener('error', (e) => window.__problems.push('error: ' + e.message));
window.addEventListener('unhandledrejection', (e) => window.__problems.push('unhandled rejection: ' + e.reason));
document.addEventListener('securitypolicyviolation', (e) =>
  window.__problems.push('CSP violation: ' + e.violatedDirective + ' blocked ' + e.blockedURI));
`

// openTab opens a blank tab with the probes installed and closes it when the
// test ends.
func (b *browser) openTab(ctx context.Context, t *testing.T) *tab {
	t.Helper()
	var target struct {
		TargetID string `json:"targetId"`
	}
	require.NoError(t, b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target))
	t.Cleanup(func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.call(closeCtx, "", "Target.closeTarget", map[string]any{"targetId": target.TargetID}, nil)
	})
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	require.NoError(t, b.call(ctx, "", "Target.attachToTarget",
		map[string]any{"targetId": target.TargetID, "flatten": true}, &attached))
	tb := &tab{browser: b, sessionID: attached.SessionID}
	require.NoError(t, tb.call(ctx, "Page.enable", nil, nil))
	require.NoError(t, tb.call(ctx, "Page.addScriptToEvaluateOnNewDocument",
		map[string]any{"source": pageProbes}, nil))
	return tb
}

// call sends a CDP command to this tab.
func (tb *tab) call(ctx context.Context, method string, params, result any) error {
	return tb.browser.call(ctx, tb.sessionID, method, params, result)
}

// navigate loads url in the tab; CDP answers once the new document commits.
func (tb *tab) navigate(ctx context.Context, url string) error {
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	if err := tb.call(ctx, "Page.navigate", map[string]any{"url": url}, &nav); err != nil {
		return err
	}
	if nav.ErrorText != "" {
		return fmt.Errorf("navigating to %s: %s", url, nav.ErrorText)
	}
	return nil
}

// evaluate runs a JavaScript expression in the page, awaiting it if it is a
// promise, and decodes its JSON value into result unless nil.
func (tb *tab) evaluate(ctx context.Context, expression string, result any) error {
	var reply struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	err := tb.call(ctx, "Runtime.evaluate", map[string]any{
		"expression":    expression,
		"awaitPromise":  true,
		"returnByValue": true,
	}, &reply)
	if err != nil {
		return err
	}
	if reply.ExceptionDetails != nil {
		return fmt.Errorf("evaluating %q: %s %s", expression, reply.ExceptionDetails.Text, reply.ExceptionDetails.Exception.Description)
	}
	if result == nil || len(reply.Result.Value) == 0 {
		return nil
	}
	if err := json.Unmarshal(reply.Result.Value, result); err != nil {
		return fmt.Errorf("decoding the value of %q: %w", expression, err)
	}
	return nil
}

// waitFor waits until the JavaScript expression is truthy and returns its
// value; ctx's deadline bounds the wait. The page re-checks it on every DOM
// change (a MutationObserver) and every 25 ms: expressions also read state
// that is not in the DOM (CodeMirror's parsed documentAST, set after a
// debounce), which can change after the last DOM mutation on a slow machine.
func (tb *tab) waitFor(ctx context.Context, expression string, result any) error {
	script := `new Promise((resolve) => {
	  let timer = null;
	  const check = () => {
	    let value;
	    try { value = (` + expression + `); } catch (e) { return false; }
	    if (!value) { return false; }
	    observer.disconnect();
	    clearInterval(timer);
	    resolve(value);
	    return true;
	  };
	  const observer = new MutationObserver(check);
	  if (!check()) {
	    observer.observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
	    timer = setInterval(check, 25);
	  }
	})`
	err := tb.evaluate(ctx, script, result)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("waiting for %s: %w", expression, err)
	}
	return err
}

// describe returns what the page shows and the problems it recorded, for
// failure messages.
func (tb *tab) describe() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var state struct {
		Text     string   `json:"text"`
		Problems []string `json:"problems"`
	}
	err := tb.evaluate(ctx, `({text: document.body ? document.body.innerText : '', problems: window.__problems || []})`, &state)
	if err != nil {
		return "cannot read the page: " + err.Error()
	}
	return fmt.Sprintf("page text:\n%s\nproblems: %q", state.Text, state.Problems)
}

// screenshot returns a PNG of the tab's viewport.
func (tb *tab) screenshot(ctx context.Context) ([]byte, error) {
	var shot struct {
		Data []byte `json:"data"` // base64 in JSON, which encoding/json decodes into []byte
	}
	if err := tb.call(ctx, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot); err != nil {
		return nil, err
	}
	return shot.Data, nil
}
