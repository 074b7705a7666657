package podioemu

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// LoadJSONL seeds the server from r, one JSON object per line, each with
// a kind (blank lines and lines starting with # are skipped):
//
//	{"kind":"client","client_id":"memvisor","client_secret":"s3cret"}
//	{"kind":"user","username":"ada@example.com","password":"pw"}
//	{"kind":"app","app_id":30001,"app_token":"tok","name":"Leads","fields":[
//	    {"external_id":"title","type":"text","label":"Title"},
//	    {"external_id":"status","type":"category","label":"Status","options":[{"text":"Open"},{"text":"Won"}]}]}
//	{"kind":"item","app_id":30001,"external_id":"crm-1","created_on":"2024-01-02 10:00:00",
//	    "tags":["vip"],"fields":{"title":"Acme","status":["Open"]}}
//
// An app line is an App; an item line is an Item, whose values take the
// create operation's form, with category options by id or by text.
func (s *Server) LoadJSONL(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			return fmt.Errorf("seed line %d: %w", n, err)
		}
		var err error
		switch head.Kind {
		case "client":
			var l struct {
				ClientID     string `json:"client_id"`
				ClientSecret string `json:"client_secret"`
			}
			if err = json.Unmarshal(line, &l); err == nil {
				s.AddClient(l.ClientID, l.ClientSecret)
			}
		case "user":
			var l struct {
				Username string `json:"username"`
				Password string `json:"password"`
			}
			if err = json.Unmarshal(line, &l); err == nil {
				s.AddUser(l.Username, l.Password)
			}
		case "app":
			var a App
			if err = json.Unmarshal(line, &a); err == nil {
				_, err = s.AddApp(a)
			}
		case "file":
			var f SeedFile
			if err = json.Unmarshal(line, &f); err == nil {
				_, err = s.AddFile(f)
			}
		case "item":
			var it Item
			if err = json.Unmarshal(line, &it); err == nil {
				_, err = s.Seed(it)
			}
		default:
			err = fmt.Errorf("kind %q is not one of client, user, app, file, item", head.Kind)
		}
		if err != nil {
			return fmt.Errorf("seed line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read seed: %w", err)
	}
	return nil
}

// DumpJSONL writes an app's items to w, one GET /item body per line, in
// item_id order.
func (s *Server) DumpJSONL(w io.Writer, appID int64) error {
	s.mu.Lock()
	a := s.apps[appID]
	if a == nil {
		s.mu.Unlock()
		return fmt.Errorf("dump: app %d does not exist", appID)
	}
	lines := make([][]byte, 0, len(a.items))
	for _, it := range a.items {
		b, err := json.Marshal(s.render(a, it))
		if err != nil {
			s.mu.Unlock()
			return fmt.Errorf("dump item %d: %w", it.id, err)
		}
		lines = append(lines, b)
	}
	s.mu.Unlock()
	bw := bufio.NewWriter(w)
	for _, l := range lines {
		bw.Write(l)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// Items returns an app's items as GET /item bodies, in item_id order.
func (s *Server) Items(appID int64) []json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.apps[appID]
	if a == nil {
		return nil
	}
	out := make([]json.RawMessage, 0, len(a.items))
	for _, it := range a.items {
		b, _ := json.Marshal(s.render(a, it))
		out = append(out, b)
	}
	return out
}
