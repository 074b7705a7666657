package podio

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
)

// TypeImage is Podio's image field; its values are files.
const TypeImage = "image"

// FileRef is a file as an item or an image field names it.
type FileRef struct {
	FileID   int64  `json:"file_id"`
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Mimetype string `json:"mimetype,omitempty"`
	// HostedBy is "podio" for a file Podio holds; a link to a file held
	// elsewhere (Google Drive, Dropbox, ...) has the other host's name
	// and no content to copy.
	HostedBy string `json:"hosted_by,omitempty"`
}

// copyable reports whether Podio holds the file's content.
func (f FileRef) copyable() bool { return f.HostedBy == "" || f.HostedBy == "podio" }

// CarryField is the pseudo-field in which a Podio source hands the
// target what is not a field value: the source item id, its files and
// how many comments it has. Only a source opened to copy files or
// comments adds it, and only a Podio target reads it; it is never
// written as a field.
const CarryField = "$podio"

// carried is the value of CarryField.
type carried struct {
	ItemID   int64     `json:"item_id"`
	Files    []FileRef `json:"files,omitempty"`
	Comments int       `json:"comments,omitempty"`
}

// takeCarried splits CarryField off an item's fields. The fields are
// copied, never changed in place: the batcher may hold them.
func takeCarried(f connector.Fields) (*carried, connector.Fields, error) {
	raw, ok := f[CarryField]
	if !ok {
		return nil, f, nil
	}
	out := make(connector.Fields, len(f)-1)
	for k, v := range f {
		if k != CarryField {
			out[k] = v
		}
	}
	var c carried
	if err := json.Unmarshal(raw, &c); err != nil || c.ItemID <= 0 {
		return nil, out, validationError("field %s: not a source item reference (got %s)", CarryField, short(raw))
	}
	return &c, out, nil
}

// DownloadFile opens a file's content: GET /file/{file_id}/raw. The
// caller reads and closes it; nothing is buffered beyond the transport's
// own few kilobytes.
func (c *Client) DownloadFile(ctx context.Context, fileID int64) (io.ReadCloser, error) {
	resp, err := c.stream(ctx, http.MethodGet, fmt.Sprintf("/file/%d/raw", fileID), "", nil, false)
	if err != nil {
		return nil, fmt.Errorf("download podio file %d: %w", fileID, err)
	}
	return resp.Body, nil
}

// UploadFile uploads content as a new file: POST /file/v2/, multipart
// with the parts filename and source. The body is produced by a
// multipart.Writer into an io.Pipe as the upload reads it, so a file of
// any size goes through a fixed few tens of kilobytes. It returns the new
// file's id.
func (c *Client) UploadFile(ctx context.Context, name string, content io.Reader) (int64, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	var wg sync.WaitGroup
	var copied int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := func() error {
			if err := mw.WriteField("filename", name); err != nil {
				return err
			}
			part, err := mw.CreateFormFile("source", name)
			if err != nil {
				return err
			}
			if copied, err = io.Copy(part, content); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	resp, err := c.stream(ctx, http.MethodPost, "/file/v2/", mw.FormDataContentType(), pr, true)
	// Whatever happened, the writer must not stay blocked on the pipe.
	pr.CloseWithError(errors.New("upload ended"))
	wg.Wait()
	if err != nil {
		return 0, fmt.Errorf("upload podio file %q: %w", name, err)
	}
	defer resp.Body.Close()
	var ans struct {
		FileID int64 `json:"file_id"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ans); err != nil || ans.FileID <= 0 {
		return 0, fmt.Errorf("upload podio file %q (%d bytes): %w", name, copied,
			networkError(fmt.Errorf("the answer has no file_id")))
	}
	return ans.FileID, nil
}

// AttachFile attaches an uploaded file to an item: POST
// /file/{file_id}/attach with {"ref_type":"item","ref_id":item_id}.
func (c *Client) AttachFile(ctx context.Context, fileID, itemID int64) error {
	r := request{method: http.MethodPost, path: fmt.Sprintf("/file/%d/attach", fileID),
		body: map[string]any{"ref_type": "item", "ref_id": itemID}}
	if _, err := c.do(ctx, r, nil); err != nil {
		return fmt.Errorf("attach podio file %d to item %d: %w", fileID, itemID, err)
	}
	return nil
}

// mover copies files from the source's Podio to the target's, a bounded
// number at a time.
type mover struct {
	src, dst *Client
	sem      chan struct{}
	log      zerolog.Logger
}

func newMover(src, dst *Client, concurrency int, log zerolog.Logger) *mover {
	if concurrency <= 0 {
		concurrency = 2
	}
	return &mover{src: src, dst: dst, sem: make(chan struct{}, concurrency), log: log}
}

// copy streams one file from the source into a new upload on the target
// and returns the new file's id. A failed attempt is started again from
// the download; an upload whose answer was lost may stay behind as an
// orphan, never attached.
func (m *mover) copy(ctx context.Context, f FileRef) (int64, error) {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-m.sem }()
	bo := m.dst.newBackoff()
	for attempt := 1; ; attempt++ {
		id, err := m.copyOnce(ctx, f)
		if err == nil {
			return id, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		_, retry := connector.Classify(err)
		if !retry || attempt >= m.dst.maxAttempts {
			return 0, fmt.Errorf("copy file %d (%s, %d bytes): %w", f.FileID, f.Name, f.Size, err)
		}
		m.log.Debug().Err(err).Int64("file_id", f.FileID).Int("attempt", attempt).Msg("file copy failed; starting it again")
		if err := sleep(ctx, bo.NextBackOff()); err != nil {
			return 0, err
		}
	}
}

func (m *mover) copyOnce(ctx context.Context, f FileRef) (int64, error) {
	rc, err := m.src.DownloadFile(ctx, f.FileID)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	name := strings.TrimSpace(f.Name)
	if name == "" {
		name = fmt.Sprintf("file-%d", f.FileID)
	}
	return m.dst.UploadFile(ctx, name, rc)
}

// sameFile is how a file already on the target is recognized: by name
// and size, as the Podio API gives no checksum.
func sameFile(a, b FileRef) bool { return a.Name == b.Name && a.Size == b.Size }
