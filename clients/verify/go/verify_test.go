package wssverify

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The repository root, from clients/verify/go.
var root = filepath.Join("..", "..", "..")

const (
	t0     = 1767225600 // 2026-01-01T00:00:00Z
	secret = "wss_test_secret"
)

var body = []byte(`{"order_id":"A-1001","status":"shipped"}`)

func readJSON(t *testing.T, v interface{}, parts ...string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(append([]string{root}, parts...)...))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatal(err)
	}
}

func at(seconds float64) time.Time {
	whole := math.Floor(seconds)
	return time.Unix(int64(whole), int64((seconds-whole)*1e9))
}

func headers(ts, sig string) http.Header {
	h := http.Header{}
	h.Set(TimestampHeader, ts)
	h.Set(SignatureHeader, sig)
	return h
}

func reason(err error) string {
	if err == nil {
		return "ok"
	}
	var e *Error
	if !errors.As(err, &e) {
		return "not an *Error: " + err.Error()
	}
	return string(e.Reason)
}

type vector struct {
	Name, Secret, Timestamp, Signature string
	BodyBase64                         string `json:"body_base64"`
}

func signedAt(t *testing.T, ts string) float64 {
	if n, err := strconv.ParseInt(ts, 10, 64); err == nil {
		return float64(n)
	}
	parsed, err := time.Parse(time.RFC3339, ts)
	if err != nil {
		t.Fatal(err)
	}
	return float64(parsed.Unix())
}

func TestSignatureVectors(t *testing.T) {
	var doc struct{ Valid, Invalid []vector }
	readJSON(t, &doc, "tests", "vectors", "signatures.json")
	if len(doc.Valid) < 7 || len(doc.Invalid) < 6 {
		t.Fatalf("expected the full vectors, got %d valid and %d invalid", len(doc.Valid), len(doc.Invalid))
	}
	for _, c := range doc.Valid {
		t.Run("valid/"+c.Name, func(t *testing.T) {
			b, _ := base64.StdEncoding.DecodeString(c.BodyBase64)
			if got := Sign(c.Secret, c.Timestamp, b); got != c.Signature {
				t.Fatalf("Sign = %s, want %s", got, c.Signature)
			}
			if err := Verify(c.Secret, headers(c.Timestamp, c.Signature), b, WithNow(at(signedAt(t, c.Timestamp)+10))); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, c := range doc.Invalid {
		t.Run("invalid/"+c.Name, func(t *testing.T) {
			b, _ := base64.StdEncoding.DecodeString(c.BodyBase64)
			err := Verify(c.Secret, headers(c.Timestamp, c.Signature), b, WithNow(at(signedAt(t, c.Timestamp)+10)))
			if got := reason(err); got != string(NoMatch) {
				t.Fatalf("got %s, want no_match", got)
			}
		})
	}
}

func TestSharedCases(t *testing.T) {
	var doc struct {
		Secret, Body string
		Tolerance    float64
		Cases        []struct {
			Name      string
			Headers   [][2]string
			Now       float64
			Expect    string
			Secret    *string
			Body      *string
			Tolerance *float64
		}
	}
	readJSON(t, &doc, "clients", "verify", "cases.json")
	if len(doc.Cases) < 40 {
		t.Fatalf("expected the full case list, got %d", len(doc.Cases))
	}
	for _, c := range doc.Cases {
		t.Run(c.Name, func(t *testing.T) {
			s, b, tol := doc.Secret, doc.Body, doc.Tolerance
			if c.Secret != nil {
				s = *c.Secret
			}
			if c.Body != nil {
				b = *c.Body
			}
			if c.Tolerance != nil {
				tol = *c.Tolerance
			}
			h := http.Header{}
			for _, pair := range c.Headers {
				h.Add(pair[0], pair[1])
			}
			err := Verify(s, h, []byte(b), WithTolerance(time.Duration(tol*float64(time.Second))), WithNow(at(c.Now)))
			if got := reason(err); got != c.Expect {
				t.Fatalf("got %s (%v), want %s", got, err, c.Expect)
			}
			if err != nil && strings.Contains(err.Error(), s) {
				t.Fatal("the error shows the secret")
			}
		})
	}
}

func TestISO8601AndEpochTimestampsAreSignedAsSent(t *testing.T) {
	for _, ts := range []string{"1767225600", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00"} {
		if err := Verify(secret, headers(ts, Sign(secret, ts, body)), body, WithNow(at(t0))); err != nil {
			t.Errorf("%s: %v", ts, err)
		}
	}
	err := Verify(secret, headers("2026-01-01T00:00:00Z", Sign(secret, "1767225600", body)), body, WithNow(at(t0)))
	if reason(err) != "no_match" {
		t.Errorf("the same instant written differently must not verify: %v", err)
	}
}

func TestFiveMinuteWindowBothWays(t *testing.T) {
	h := headers(strconv.Itoa(t0), Sign(secret, strconv.Itoa(t0), body))
	for _, c := range []struct {
		now  float64
		tol  time.Duration
		want string
	}{{t0 + 300, 0, "ok"}, {t0 - 300, 0, "ok"}, {t0 + 301, 0, "too_old"}, {t0 - 301, 0, "too_new"}, {t0 + 400, 600 * time.Second, "ok"}} {
		opts := []Option{WithNow(at(c.now))}
		if c.tol != 0 {
			opts = append(opts, WithTolerance(c.tol))
		}
		if got := reason(Verify(secret, h, body, opts...)); got != c.want {
			t.Errorf("now=%v: got %s, want %s", c.now, got, c.want)
		}
	}
}

func TestTheDefaultClockIsNow(t *testing.T) {
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	if err := Verify(secret, headers(ts, Sign(secret, ts, body)), body); err != nil {
		t.Fatal(err)
	}
	if Verify(secret, headers(strconv.Itoa(t0), Sign(secret, strconv.Itoa(t0), body)), body) == nil {
		t.Fatal("a timestamp of 2026-01-01 must not be fresh now")
	}
}

func TestRotationNewThenOld(t *testing.T) {
	ts := strconv.Itoa(t0)
	h := headers(ts, Sign(secret, ts, body)+","+Sign("wss_previous_secret", ts, body))
	for _, s := range []string{secret, "wss_previous_secret"} {
		if err := Verify(s, h, body, WithNow(at(t0))); err != nil {
			t.Errorf("%v", err)
		}
	}
	if reason(Verify("wss_neither_secret", h, body, WithNow(at(t0)))) != "no_match" {
		t.Error("a third secret must not verify")
	}
}

func TestHandBuiltHeadersWithOtherSpellings(t *testing.T) {
	ts := strconv.Itoa(t0)
	h := http.Header{"x-wss-timestamp": {ts}, "X-WSS-SIGNATURE": {Sign(secret, ts, body)}}
	if err := Verify(secret, h, body, WithNow(at(t0))); err != nil {
		t.Fatal(err)
	}
}

func TestAbsurdTimestampsAreRefused(t *testing.T) {
	if got := reason(Verify(secret, headers(strings.Repeat("9", 5000), strings.Repeat("0", 64)), body, WithNow(at(t0)))); got != "bad_timestamp" {
		t.Fatal(got)
	}
	padded := strings.Repeat("0", 5000) + strconv.Itoa(t0)
	if err := Verify(secret, headers(padded, Sign(secret, padded, body)), body, WithNow(at(t0))); err != nil {
		t.Fatal(err)
	}
}
