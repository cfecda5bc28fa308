// Package wssverify verifies the requests wss sends to a webhook receiver. Standard library only;
// one file to copy.
//
//	body, _ := io.ReadAll(r.Body)
//	if err := wssverify.Verify(secret, r.Header, body); err != nil {
//		http.Error(w, err.Error(), http.StatusUnauthorized)
//		return
//	}
//
// The scheme (docs/contract.md §3): X-WSS-Signature is the lowercase hex HMAC-SHA256, keyed with the UTF-8
// bytes of the webhook's secret, of the X-WSS-Timestamp header value as sent followed directly by
// the raw request body. The timestamp is Unix epoch seconds (wss sends those) or an RFC 3339
// date-time with an offset; it must be within the tolerance (default 300 s) of the receiver's
// clock, either way, which makes a captured request useless for replays. During a secret rotation
// the signature header carries several comma-separated signatures (new first, then old): the
// request is accepted when any of them matches. Comparisons are constant-time.
//
// The rules, the reason codes and their order match the Rust reference wss::verify_headers; both
// are tested against tests/vectors/signatures.json and clients/verify/cases.json.
package wssverify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	TimestampHeader = "X-WSS-Timestamp"
	SignatureHeader = "X-WSS-Signature"
	// DefaultTolerance is how far a timestamp may be from the receiver's clock, either way.
	DefaultTolerance = 300 * time.Second
)

// Reason says why a request was refused.
type Reason string

// Every reason, in the order they are checked.
const (
	MissingTimestamp Reason = "missing_timestamp"
	MissingSignature Reason = "missing_signature"
	BadTimestamp     Reason = "bad_timestamp"
	TooOld           Reason = "too_old"
	TooNew           Reason = "too_new"
	NoMatch          Reason = "no_match"
)

// Error is what Verify returns for a refused request; it never contains the secret.
type Error struct {
	Reason Reason
	Detail string
}

func (e *Error) Error() string { return string(e.Reason) + ": " + e.Detail }

// Option adjusts Verify.
type Option func(*options)

type options struct {
	tolerance time.Duration
	now       time.Time
}

// WithTolerance replaces the 300 s freshness window.
func WithTolerance(d time.Duration) Option { return func(o *options) { o.tolerance = d } }

// WithNow sets the receiver's clock, for tests.
func WithNow(t time.Time) Option { return func(o *options) { o.now = t } }

// Sign returns the X-WSS-Signature value wss sends: hex HMAC-SHA256(secret, timestamp ++ body).
func Sign(secret, timestamp string, body []byte) string {
	return hex.EncodeToString(mac(secret, timestamp, body))
}

// Verify checks a request's X-WSS-Timestamp and X-WSS-Signature headers: nil when genuine and
// fresh, else an *Error. The first timestamp header counts; every signature header counts. body
// must be the raw bytes as received, never re-serialized JSON.
func Verify(secret string, header http.Header, body []byte, opts ...Option) error {
	o := options{tolerance: DefaultTolerance}
	for _, opt := range opts {
		opt(&o)
	}
	if o.now.IsZero() {
		o.now = time.Now()
	}
	timestamps, signatures := headerValues(header, TimestampHeader), headerValues(header, SignatureHeader)
	if len(timestamps) == 0 {
		return refuse(MissingTimestamp, "the %s header is missing", TimestampHeader)
	}
	if len(signatures) == 0 {
		return refuse(MissingSignature, "the %s header is missing", SignatureHeader)
	}
	timestamp := timestamps[0]
	signedAt, ok := parseTimestamp(timestamp)
	if !ok {
		return refuse(BadTimestamp, "the timestamp %q is neither Unix epoch seconds nor an RFC 3339 date-time with an offset", timestamp)
	}
	age := float64(o.now.UnixNano())/1e9 - signedAt
	tolerance := o.tolerance.Seconds()
	if age > tolerance {
		return refuse(TooOld, "the timestamp is %.0f s old, more than the %g s tolerance", math.Ceil(age), tolerance)
	}
	if -age > tolerance {
		return refuse(TooNew, "the timestamp is %.0f s in the future, more than the %g s tolerance", math.Ceil(-age), tolerance)
	}

	expected := mac(secret, timestamp, body)
	matched := false
	for _, h := range signatures {
		for _, candidate := range strings.Split(h, ",") {
			candidate = strings.TrimSpace(candidate)
			if len(candidate) != 64 {
				continue
			}
			if decoded, err := hex.DecodeString(candidate); err == nil {
				// No early exit: every candidate is compared, each in constant time.
				matched = hmac.Equal(decoded, expected) || matched
			}
		}
	}
	if matched {
		return nil
	}
	return refuse(NoMatch, "no signature matches: check that the secret is the webhook's current one and that the raw body is verified exactly as received")
}

// headerValues returns the values of name: those under its canonical key (as net/http stores
// them) first, then those under other spellings of it (a hand-built http.Header), in key order.
func headerValues(header http.Header, name string) []string {
	canonical := http.CanonicalHeaderKey(name)
	values := append([]string(nil), header[canonical]...)
	var others []string
	for key := range header {
		if key != canonical && strings.EqualFold(key, name) {
			others = append(others, key)
		}
	}
	sort.Strings(others)
	for _, key := range others {
		values = append(values, header[key]...)
	}
	return values
}

func refuse(reason Reason, format string, args ...interface{}) error {
	return &Error{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

func mac(secret, timestamp string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(timestamp))
	m.Write(body)
	return m.Sum(nil)
}

var (
	epochRe   = regexp.MustCompile(`^[0-9]+$`)
	rfc3339Re = regexp.MustCompile(`^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$`)
)

// parseTimestamp reads Unix seconds, or an RFC 3339 date-time with an offset (leap second 60 rolls
// over), as seconds since the epoch.
func parseTimestamp(value string) (float64, bool) {
	if epochRe.MatchString(value) {
		digits := strings.TrimLeft(value, "0")
		if digits == "" {
			return 0, true
		}
		n, err := strconv.ParseInt(digits, 10, 64)
		if err != nil {
			return 0, false
		}
		return float64(n), true
	}
	m := rfc3339Re.FindStringSubmatch(value)
	if m == nil {
		return 0, false
	}
	num := func(s string) int64 { n, _ := strconv.ParseInt(s, 10, 64); return n }
	year, month, day, hour, minute, second := num(m[1]), num(m[2]), num(m[3]), num(m[4]), num(m[5]), num(m[6])
	if month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month) || hour > 23 || minute > 59 || second > 60 {
		return 0, false
	}
	var offset int64
	if m[9] != "" {
		oh, om := num(m[10]), num(m[11])
		if oh > 23 || om > 59 {
			return 0, false
		}
		offset = oh*3600 + om*60
		if m[9] == "-" {
			offset = -offset
		}
	}
	fraction := 0.0
	if m[7] != "" {
		digits := m[7]
		if len(digits) > 9 {
			digits = digits[:9]
		}
		fraction, _ = strconv.ParseFloat("0."+digits, 64)
	}
	secs := daysFromCivil(year, month, day)*86400 + hour*3600 + minute*60 + second - offset
	return float64(secs) + fraction, true
}

func daysInMonth(year, month int64) int64 {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil counts days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
// algorithm); years here are 0000-9999, so plain division floors.
func daysFromCivil(year, month, day int64) int64 {
	y := year
	if month <= 2 {
		y--
	}
	era := y / 400
	if y < 0 {
		era = (y - 399) / 400
	}
	yoe := y - era*400
	doy := (153*((month+9)%12)+2)/5 + day - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}
