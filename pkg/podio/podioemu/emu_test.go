package podioemu_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

const app = 30001

type emu struct {
	t   *testing.T
	s   *podioemu.Server
	url string
	now time.Time
}

func newEmu(t *testing.T, cfg podioemu.Config) *emu {
	t.Helper()
	e := &emu{t: t, now: time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)}
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return e.now }
	}
	e.s = podioemu.New(cfg)
	e.s.AddClient("cid", "secret")
	e.s.AddUser("ada", "pw")
	if _, err := e.s.AddApp(podioemu.App{AppID: app, AppToken: "tok", Fields: []podioemu.Field{
		{ExternalID: "title", Type: "text"},
		{ExternalID: "due", Type: "date"},
		{ExternalID: "photo", Type: "image"},
		{ExternalID: "score", Type: "calculation"},
	}}); err != nil {
		t.Fatal(err)
	}
	u, err := e.s.Start("")
	if err != nil {
		t.Fatal(err)
	}
	e.url = u
	t.Cleanup(func() { e.s.Close() })
	return e
}

// token gets a token by the password flow and returns the answer.
func (e *emu) token(params url.Values) (int, map[string]any, http.Header) {
	e.t.Helper()
	resp, err := http.PostForm(e.url+"/oauth/token/v2", params)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m, resp.Header
}

func (e *emu) login() (access, refresh string) {
	e.t.Helper()
	st, m, _ := e.token(url.Values{"grant_type": {"password"}, "client_id": {"cid"}, "client_secret": {"secret"}, "username": {"ada"}, "password": {"pw"}})
	if st != 200 {
		e.t.Fatalf("password grant: %d %v", st, m)
	}
	return m["access_token"].(string), m["refresh_token"].(string)
}

func (e *emu) call(tok, method, path string, body any) (int, []byte, http.Header) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	req.Header.Set("Authorization", "OAuth2 "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data, resp.Header
}

func TestUnknownItemRoutesAre404AndCreateNothing(t *testing.T) {
	e := newEmu(t, podioemu.Config{})
	tok, _ := e.login()
	for _, p := range []string{"/item/app/30001/delete", "/item/app/30001/calculate", "/item/app/30001/x/y/"} {
		st, body, _ := e.call(tok, http.MethodPost, p, map[string]any{"fields": map[string]any{"title": "x"}})
		if st != http.StatusNotFound {
			t.Errorf("POST %s: %d %s, want 404", p, st, body)
		}
	}
	if n := len(e.s.Items(app)); n != 0 {
		t.Fatalf("%d items exist after unknown routes, want 0", n)
	}
	if st, body, _ := e.call(tok, http.MethodPost, "/item/app/30001/", map[string]any{"fields": map[string]any{"title": "x"}}); st != 200 {
		t.Fatalf("create: %d %s", st, body)
	}
}

// Podio's two tiers: 1,000 calls an hour, 250 for "Rate limited" calls,
// per user per API key; the headers name the ceiling of the call just
// made; once a limit is hit every call is a 420 that says how long to
// wait; the token endpoint counts too.
func TestTwoRateLimitTiers(t *testing.T) {
	e := newEmu(t, podioemu.Config{RateLimit: 20, LimitedRateLimit: 5, RateWindow: time.Hour})
	tok, _ := e.login() // call 1 of the general tier
	for i := range 5 {
		st, _, h := e.call(tok, http.MethodPost, "/item/app/30001/filter/", map[string]any{"limit": 1})
		if st != 200 || h.Get("X-Rate-Limit-Limit") != "5" || h.Get("X-Rate-Limit-Remaining") != fmt.Sprint(4-i) {
			t.Fatalf("filter %d: %d, limit %q remaining %q; want 200, 5, %d", i, st, h.Get("X-Rate-Limit-Limit"), h.Get("X-Rate-Limit-Remaining"), 4-i)
		}
	}
	// The limited tier is spent: every call is refused now, of either tier.
	st, body, h := e.call(tok, http.MethodGet, "/item/app/30001/count", nil)
	if st != 420 || !strings.Contains(string(body), "wait 3600 seconds") || h.Get("X-Rate-Limit-Limit") != "20" {
		t.Fatalf("general call after the limited tier is spent: %d %s limit %q", st, body, h.Get("X-Rate-Limit-Limit"))
	}
	// Another user (another quota) is not affected; the token call
	// carries the headers.
	e.s.AddUser("bob", "pw2")
	st2, m, h2 := e.token(url.Values{"grant_type": {"password"}, "client_id": {"cid"}, "client_secret": {"secret"}, "username": {"bob"}, "password": {"pw2"}})
	if st2 != 200 || h2.Get("X-Rate-Limit-Remaining") != "19" {
		t.Fatalf("token for another user: %d %v remaining %q, want 200 and 19", st2, m, h2.Get("X-Rate-Limit-Remaining"))
	}
	// The window ends: calls go again.
	e.now = e.now.Add(time.Hour + time.Second)
	if st, body, _ := e.call(tok, http.MethodGet, "/item/app/30001/count", nil); st != 200 {
		t.Fatalf("after the window: %d %s", st, body)
	}
	// The general tier: token calls count.
	for i := 0; ; i++ {
		st, _, _ := e.token(url.Values{"grant_type": {"password"}, "client_id": {"cid"}, "client_secret": {"secret"}, "username": {"ada"}, "password": {"pw"}})
		if st == 420 {
			if i != 19 {
				t.Fatalf("token calls refused after %d, want 19 (20 minus the count call)", i)
			}
			break
		}
		if i > 30 {
			t.Fatal("the token endpoint is never rate limited")
		}
	}
}

func TestRefreshTokensExpireAndCanBeRevoked(t *testing.T) {
	e := newEmu(t, podioemu.Config{RefreshTTL: time.Hour})
	grant := func(rt string) int {
		st, _, _ := e.token(url.Values{"grant_type": {"refresh_token"}, "client_id": {"cid"}, "client_secret": {"secret"}, "refresh_token": {rt}})
		return st
	}
	_, rt := e.login()
	if st := grant(rt); st != 200 {
		t.Fatalf("fresh refresh token: %d", st)
	}
	e.now = e.now.Add(2 * time.Hour)
	if st := grant(rt); st != 400 {
		t.Fatalf("expired refresh token: %d, want 400", st)
	}
	tok, rt2 := e.login()
	if !e.s.RevokeRefreshToken(rt2) {
		t.Fatal("revoke: not found")
	}
	if st := grant(rt2); st != 400 {
		t.Fatalf("revoked refresh token: %d, want 400", st)
	}
	if st, _, _ := e.call(tok, http.MethodGet, "/app/30001", nil); st != 401 {
		t.Fatalf("access token of a revoked grant: %d, want 401", st)
	}
}

func TestFilesCommentsDatesAndDuplicateExternalIDs(t *testing.T) {
	e := newEmu(t, podioemu.Config{UserZone: time.FixedZone("UTC+2", 7200)})
	tok, _ := e.login()
	// Upload, streamed as multipart with filename and source.
	content := bytes.Repeat([]byte("memvisor"), 100_000)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("filename", "a.bin")
	part, _ := mw.CreateFormFile("source", "a.bin")
	part.Write(content)
	mw.Close()
	req, _ := http.NewRequest(http.MethodPost, e.url+"/file/v2/", &body)
	req.Header.Set("Authorization", "OAuth2 "+tok)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var up struct {
		FileID int64 `json:"file_id"`
	}
	json.NewDecoder(resp.Body).Decode(&up)
	resp.Body.Close()
	if resp.StatusCode != 200 || up.FileID == 0 {
		t.Fatalf("upload: %d %+v", resp.StatusCode, up)
	}
	img, _ := e.s.AddFile(podioemu.SeedFile{Name: "p.png", Size: 1000, Seed: 9})
	// Create with file_ids, an image, a local time and two items with the
	// same external_id.
	var ids []int64
	for range 2 {
		st, data, _ := e.call(tok, http.MethodPost, "/item/app/30001/", map[string]any{"external_id": "dup",
			"fields": map[string]any{"title": "x", "photo": []int64{img}, "due": map[string]any{"start": "2024-06-01 12:00:00"}}})
		var ans struct {
			ItemID int64 `json:"item_id"`
		}
		json.Unmarshal(data, &ans)
		if st != 200 {
			t.Fatalf("create: %d %s", st, data)
		}
		ids = append(ids, ans.ItemID)
		if len(ids) == 1 {
			if st, data, _ := e.call(tok, http.MethodPost, fmt.Sprintf("/file/%d/attach", up.FileID), map[string]any{"ref_type": "item", "ref_id": ans.ItemID}); st != 204 {
				t.Fatalf("attach: %d %s", st, data)
			}
			// Attaching again changes nothing.
			e.call(tok, http.MethodPost, fmt.Sprintf("/file/%d/attach", up.FileID), map[string]any{"ref_type": "item", "ref_id": ans.ItemID})
		}
	}
	if files := e.s.ItemFiles(ids[0]); len(files) != 1 || files[0].Size != int64(len(content)) {
		t.Fatalf("item files: %+v", files)
	}
	sum := sha256.Sum256(content)
	if fi, _ := e.s.File(up.FileID); fi.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("stored file sum %s", fi.SHA256)
	}
	st, raw, _ := e.call(tok, http.MethodGet, fmt.Sprintf("/file/%d/raw", up.FileID), nil)
	if st != 200 || !bytes.Equal(raw, content) {
		t.Fatalf("download: %d, %d bytes", st, len(raw))
	}
	// The lookup by external_id answers one of the duplicates.
	st, data, _ := e.call(tok, http.MethodGet, "/item/app/30001/external_id/dup", nil)
	var got struct {
		ItemID int64 `json:"item_id"`
		Fields []struct {
			ExternalID string           `json:"external_id"`
			Values     []map[string]any `json:"values"`
		} `json:"fields"`
	}
	json.Unmarshal(data, &got)
	if st != 200 || got.ItemID != ids[0] {
		t.Fatalf("lookup of a duplicate external_id: %d item %d, want %d", st, got.ItemID, ids[0])
	}
	for _, f := range got.Fields {
		if f.ExternalID == "due" {
			v := f.Values[0]
			if v["start"] != "2024-06-01 12:00:00" || v["start_utc"] != "2024-06-01 10:00:00" {
				t.Fatalf("date in a UTC+2 zone: %v", v)
			}
		}
	}
	// Comments, with their external_id.
	if st, data, _ := e.call(tok, http.MethodPost, fmt.Sprintf("/comment/item/%d/?silent=true&hook=false", ids[0]), map[string]any{"value": "hi", "external_id": "m1"}); st != 200 {
		t.Fatalf("comment: %d %s", st, data)
	}
	st, data, _ = e.call(tok, http.MethodGet, fmt.Sprintf("/comment/item/%d/", ids[0]), nil)
	if st != 200 || !strings.Contains(string(data), `"external_id":"m1"`) {
		t.Fatalf("comments: %d %s", st, data)
	}
	// A calculation field is never written.
	if st, _, _ := e.call(tok, http.MethodPut, fmt.Sprintf("/item/%d", ids[0]), map[string]any{"fields": map[string]any{"score": 3}}); st != 400 {
		t.Fatalf("write to a calculation: %d, want 400", st)
	}
}
