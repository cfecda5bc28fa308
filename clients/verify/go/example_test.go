package wssverify_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	wssverify "github.com/wss-project/wss/clients/verify/go"
)

// A net/http receiver, as in this directory's README: read the raw body, verify, then use it.
func Example() {
	secret := "whsec_demo_secret_0123456789"
	hook := func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := wssverify.Verify(secret, r.Header, body); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent) // then handle json.Unmarshal(body, &event)
	}

	body := `{"id":"1767225600000-0","type":"order.created","tenant":"acme","data":{}}`
	for _, key := range []string{secret, "not-the-secret"} {
		req := httptest.NewRequest("POST", "/hook", strings.NewReader(body))
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		req.Header.Set("X-WSS-Timestamp", ts)
		req.Header.Set("X-WSS-Signature", wssverify.Sign(key, ts, []byte(body)))
		rec := httptest.NewRecorder()
		hook(rec, req)
		reason := strings.SplitN(rec.Body.String(), ":", 2)[0] // "no_match: no signature matches…"
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%d %s", rec.Code, reason)))
	}
	// Output:
	// 204
	// 401 no_match
}
