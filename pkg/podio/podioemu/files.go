package podioemu

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A file is stored as a seed (content generated on demand, so a test can
// have a 100 MB file without holding or storing it) or, once uploaded,
// as a file on disk.
type file struct {
	hostedBy string // "" for podio: a link to a file held elsewhere
	id       int64
	name     string
	size     int64
	mimetype string
	seed     uint64 // generated content, when path is ""
	path     string // uploaded content
	sum      string // SHA-256, hex; "" until known
	itemID   int64  // the item it is attached to, 0 for none
}

// FileInfo describes a stored file.
type FileInfo struct {
	FileID   int64  `json:"file_id"`
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Mimetype string `json:"mimetype"`
	SHA256   string `json:"sha256"`
	ItemID   int64  `json:"item_id,omitempty"`
}

// SeedFile is a file to seed: Size bytes generated from Seed.
type SeedFile struct {
	FileID   int64  `json:"file_id,omitempty"`
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Seed     uint64 `json:"seed"`
	Mimetype string `json:"mimetype,omitempty"`
	// HostedBy names another host (google, dropbox, ...) for a link to a
	// file Podio does not hold; its raw content is a 404.
	HostedBy string `json:"hosted_by,omitempty"`
}

// Content returns the bytes of a generated file: size bytes of a ChaCha8
// stream keyed by seed. Tests use it to know what a file holds.
func Content(seed uint64, size int64) io.Reader {
	var key [32]byte
	for i := range 4 {
		key[i*8] = byte(seed >> (8 * i))
		key[i*8+4] = byte(seed >> (8 * (i + 4)))
	}
	return io.LimitReader(rand.NewChaCha8(key), size)
}

// AddFile stores a generated file, not attached to anything, and returns
// its id.
func (s *Server) AddFile(f SeedFile) (int64, error) {
	if f.Name == "" || f.Size < 0 {
		return 0, errors.New("add file: a file needs a name and a size of 0 or more")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := f.FileID
	if id == 0 {
		s.nextFile++
		id = s.nextFile
	} else if s.files[id] != nil {
		return 0, fmt.Errorf("add file: file %d exists", id)
	}
	s.nextFile = max(s.nextFile, id)
	mt := f.Mimetype
	if mt == "" {
		mt = "application/octet-stream"
	}
	s.files[id] = &file{id: id, name: f.Name, size: f.Size, mimetype: mt, seed: f.Seed, hostedBy: f.HostedBy}
	return id, nil
}

// open returns the content of a file.
func (f *file) open() (io.ReadCloser, error) {
	if f.path == "" {
		return io.NopCloser(Content(f.seed, f.size)), nil
	}
	return os.Open(f.path)
}

// File describes a file, with the SHA-256 of its content (computed on
// first use for a generated file).
func (s *Server) File(id int64) (FileInfo, bool) {
	s.mu.Lock()
	f := s.files[id]
	s.mu.Unlock()
	if f == nil {
		return FileInfo{}, false
	}
	if f.sum == "" {
		rc, err := f.open()
		if err != nil {
			return FileInfo{}, false
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return FileInfo{}, false
		}
		s.mu.Lock()
		f.sum = hex.EncodeToString(h.Sum(nil))
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return FileInfo{FileID: f.id, Name: f.name, Size: f.size, Mimetype: f.mimetype, SHA256: f.sum, ItemID: f.itemID}, true
}

// ItemFiles lists the files attached to an item, in attach order.
func (s *Server) ItemFiles(itemID int64) []FileInfo {
	s.mu.Lock()
	it := s.items[itemID]
	var ids []int64
	if it != nil {
		ids = append(ids, it.files...)
	}
	s.mu.Unlock()
	out := make([]FileInfo, 0, len(ids))
	for _, id := range ids {
		if fi, ok := s.File(id); ok {
			out = append(out, fi)
		}
	}
	return out
}

// renderFile is a file as the API answers it.
func (s *Server) renderFile(f *file) map[string]any {
	return map[string]any{
		"file_id": f.id, "name": f.name, "size": f.size, "mimetype": f.mimetype,
		"link": fmt.Sprintf("%s/file/%d/raw", s.baseURL(), f.id), "hosted_by": cmp.Or(f.hostedBy, "podio"),
		"description": nil,
	}
}

func (s *Server) baseURL() string {
	if s.ln == nil {
		return "https://api.podio.com"
	}
	return "http://" + s.ln.Addr().String()
}

// attachLocked attaches files to an item. A file attached to another
// item is refused; one already attached to this item stays attached
// once.
func (s *Server) attachLocked(it *item, ids []int64) error {
	for _, id := range ids {
		f := s.files[id]
		if f == nil {
			return invalid("file %d does not exist", id)
		}
		if f.itemID != 0 && f.itemID != it.id {
			return invalid("file %d is attached to item %d", id, f.itemID)
		}
	}
	for _, id := range ids {
		f := s.files[id]
		if f.itemID == it.id {
			continue
		}
		f.itemID = it.id
		it.files = append(it.files, id)
		s.stats.Attached++
	}
	return nil
}

// handleUpload serves POST /file/v2/: a multipart body with the file in
// part "source" and its name in part "filename". The content is written
// to disk as it arrives, never held whole.
func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	c := &call{w: w, r: r, write: true}
	s.mu.Lock()
	status, resp, ok := s.gate(c)
	s.mu.Unlock()
	if !ok {
		eb := resp.(errBody)
		writeError(w, r, status, eb.code, eb.desc)
		return
	}
	s.mu.Lock()
	s.uploading++
	s.stats.MaxUploadsInFlight = max(s.stats.MaxUploadsInFlight, s.uploading)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.uploading--
		s.mu.Unlock()
	}()
	mr, err := r.MultipartReader()
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "invalid_value", "the body must be multipart/form-data with parts source and filename")
		return
	}
	var name, path string
	var size int64
	var sum hash.Hash
	defer func() {
		if path != "" {
			os.Remove(path)
		}
	}()
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			writeError(w, r, http.StatusBadRequest, "invalid_value", "bad multipart body: "+err.Error())
			return
		}
		switch p.FormName() {
		case "filename":
			b, _ := io.ReadAll(io.LimitReader(p, 1024))
			name = string(b)
		case "source":
			if name == "" {
				name = p.FileName()
			}
			dir, err := s.fileDir()
			if err != nil {
				writeError(w, r, http.StatusInternalServerError, "server_error", err.Error())
				return
			}
			out, err := os.CreateTemp(dir, "upload-*")
			if err != nil {
				writeError(w, r, http.StatusInternalServerError, "server_error", err.Error())
				return
			}
			path = out.Name()
			sum = sha256.New()
			size, err = io.Copy(io.MultiWriter(out, sum), p)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				s.mu.Lock()
				s.stats.Abandoned++
				s.mu.Unlock()
				return // the client went away mid-upload: nothing is stored
			}
		}
		p.Close()
	}
	if path == "" || strings.TrimSpace(name) == "" {
		writeError(w, r, http.StatusBadRequest, "invalid_value", "the parts source and filename are required")
		return
	}
	s.mu.Lock()
	s.nextFile++
	f := &file{id: s.nextFile, name: name, size: size, mimetype: "application/octet-stream", path: path, sum: hex.EncodeToString(sum.Sum(nil))}
	s.files[f.id] = f
	s.stats.Uploads++
	body := s.renderFile(f)
	s.mu.Unlock()
	path = "" // kept
	if c.lose {
		s.dropConnection(w)
		return
	}
	if c.fail5x != 0 {
		writeError(w, r, c.fail5x, "server_error", "An unexpected error occurred")
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) fileDir() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir != "" {
		return s.dir, nil
	}
	if s.cfg.FileDir != "" {
		s.dir = s.cfg.FileDir
		return s.dir, os.MkdirAll(s.dir, 0o700)
	}
	d, err := os.MkdirTemp("", "podioemu-files-")
	if err != nil {
		return "", err
	}
	s.dir, s.ownDir = d, true
	return d, nil
}

// removeFiles deletes the uploads, when the directory is the server's.
func (s *Server) removeFiles() {
	s.mu.Lock()
	d, own := s.dir, s.ownDir
	s.mu.Unlock()
	if own {
		os.RemoveAll(filepath.Clean(d))
	}
}

func (s *Server) fileOf(c *call) (*file, int, any) {
	id, err := strconv.ParseInt(c.r.PathValue("file_id"), 10, 64)
	f := s.files[id]
	if err != nil || f == nil {
		st, b := fail(http.StatusNotFound, "not_found", "Object not found")
		return nil, st, b
	}
	if f.itemID != 0 && !s.canReach(c, s.items[f.itemID].appID) {
		st, b := fail(http.StatusForbidden, "forbidden", fmt.Sprintf("The app token does not give access to file %d", id))
		return nil, st, b
	}
	return f, 0, nil
}

// handleFile serves GET /file/{file_id}.
func (s *Server) handleFile(c *call) (int, any) {
	f, st, b := s.fileOf(c)
	if f == nil {
		return st, b
	}
	return http.StatusOK, s.renderFile(f)
}

// handleRaw serves GET /file/{file_id}/raw, streaming the content.
func (s *Server) handleRaw(w http.ResponseWriter, r *http.Request) {
	c := &call{w: w, r: r}
	s.mu.Lock()
	status, resp, ok := s.gate(c)
	var f *file
	if ok {
		f, status, resp = s.fileOf(c)
		ok = f != nil
	}
	s.mu.Unlock()
	if !ok {
		eb := resp.(errBody)
		writeError(w, r, status, eb.code, eb.desc)
		return
	}
	if f.hostedBy != "" {
		writeError(w, r, http.StatusNotFound, "not_found", fmt.Sprintf("file %d is a link to %s", f.id, f.hostedBy))
		return
	}
	rc, err := f.open()
	if err != nil {
		writeError(w, r, http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", f.mimetype)
	w.Header().Set("Content-Length", strconv.FormatInt(f.size, 10))
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", f.name))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err == nil {
		s.mu.Lock()
		s.stats.Downloads++
		s.mu.Unlock()
	}
}

// handleAttach serves POST /file/{file_id}/attach with
// {"ref_type":"item","ref_id":N}.
func (s *Server) handleAttach(c *call) (int, any) {
	f, st, b := s.fileOf(c)
	if f == nil {
		return st, b
	}
	var body struct {
		RefType string `json:"ref_type"`
		RefID   int64  `json:"ref_id"`
	}
	if json.Unmarshal(c.body, &body) != nil || body.RefType != "item" {
		return fail(http.StatusBadRequest, "invalid_value", `the body must be {"ref_type":"item","ref_id":N}`)
	}
	it := s.items[body.RefID]
	if it == nil {
		return fail(http.StatusNotFound, "not_found", "Object not found")
	}
	if !s.canReach(c, it.appID) {
		return fail(http.StatusForbidden, "forbidden", fmt.Sprintf("The app token does not give access to item %d", it.id))
	}
	if err := s.attachLocked(it, []int64{f.id}); err != nil {
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	return http.StatusNoContent, nil
}
