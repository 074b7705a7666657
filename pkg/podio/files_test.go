package podio_test

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/podio"
	"github.com/memvisor/memvisor/pkg/podio/podioemu"
)

const (
	fileSrcApp = 40001
	fileDstApp = 40002
)

// fileApp is an app with a text, an image, a date and a calculation.
func fileApp(id int64, token string) podioemu.App {
	return podioemu.App{AppID: id, Name: "Files", AppToken: token, Fields: []podioemu.Field{
		{ExternalID: "title", Type: "text", Label: "Title"},
		{ExternalID: "photo", Type: "image", Label: "Photo"},
		{ExternalID: "due", Type: "date", Label: "Due"},
		{ExternalID: "score", Type: "calculation", Label: "Score"},
	}}
}

// fileItem describes source item i: its files' sizes, its image's size
// and its comments.
type fileItem struct {
	sizes    []int64
	image    int64
	comments int
}

// seedFiles adds the two file apps and the items to s; it returns the
// source item ids in order.
func seedFiles(t testing.TB, s *podioemu.Server, items []fileItem) []int64 {
	t.Helper()
	s.AddClient(clientID, clientSecret)
	for _, a := range []podioemu.App{fileApp(fileSrcApp, srcToken), fileApp(fileDstApp, dstToken)} {
		if _, err := s.AddApp(a); err != nil {
			t.Fatal(err)
		}
	}
	var ids []int64
	for i, it := range items {
		var fids []int64
		for j, size := range it.sizes {
			id, err := s.AddFile(podioemu.SeedFile{Name: fmt.Sprintf("doc-%d-%d.bin", i, j), Size: size, Seed: uint64(i*100 + j + 1)})
			if err != nil {
				t.Fatal(err)
			}
			fids = append(fids, id)
		}
		img, err := s.AddFile(podioemu.SeedFile{Name: fmt.Sprintf("photo-%d.png", i), Size: it.image, Seed: uint64(i*100 + 99), Mimetype: "image/png"})
		if err != nil {
			t.Fatal(err)
		}
		var cs []podioemu.Comment
		for c := range it.comments {
			cs = append(cs, podioemu.Comment{Value: fmt.Sprintf("comment %d on item %d", c, i)})
		}
		raw := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
		id, err := s.Seed(podioemu.Item{AppID: fileSrcApp, FileIDs: fids, Comments: cs, Fields: map[string]json.RawMessage{
			"title": raw(fmt.Sprintf("Item %d", i)), "photo": raw([]int64{img}),
			"due":   raw(map[string]string{"start": fmt.Sprintf("2024-05-%02d 08:15:00", i%28+1)}),
			"score": raw(i),
		}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// fileSig is how a file is compared: name, size and SHA-256.
func fileSig(s *podioemu.Server, id int64) string {
	fi, ok := s.File(id)
	if !ok {
		return fmt.Sprintf("missing file %d", id)
	}
	return fmt.Sprintf("%s/%d/%s", fi.Name, fi.Size, fi.SHA256)
}

// imageFileIDs reads the file ids of an item's image field from a dump.
func imageFileIDs(t testing.TB, raw []byte) []int64 {
	t.Helper()
	var it podio.APIItem
	if err := json.Unmarshal(raw, &it); err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, f := range it.Fields {
		if f.Type != "image" {
			continue
		}
		for _, v := range f.Values {
			var x struct {
				Value podio.FileRef `json:"value"`
			}
			json.Unmarshal(v, &x)
			out = append(out, x.Value.FileID)
		}
	}
	return out
}

// checkFilesCopied checks that every source item of the file apps is in
// the target once, with byte-identical files attached once, the same
// image, every comment once, and the date at the same instant.
func checkFilesCopied(t testing.TB, s *podioemu.Server, srcIDs []int64) {
	t.Helper()
	type got struct {
		id  int64
		raw []byte
	}
	byExt := map[string][]got{}
	for _, raw := range s.Items(fileDstApp) {
		var it podio.APIItem
		json.Unmarshal(raw, &it)
		ext := ""
		if it.ExternalID != nil {
			ext = *it.ExternalID
		}
		byExt[ext] = append(byExt[ext], got{it.ItemID, raw})
	}
	if n := len(s.Items(fileDstApp)); n != len(srcIDs) {
		t.Errorf("target has %d items, want %d", n, len(srcIDs))
	}
	srcRaw := map[int64][]byte{}
	for _, raw := range s.Items(fileSrcApp) {
		var it podio.APIItem
		json.Unmarshal(raw, &it)
		srcRaw[it.ItemID] = raw
	}
	for _, src := range srcIDs {
		dst := byExt[fmt.Sprint(src)]
		if len(dst) != 1 {
			t.Errorf("source item %d is in the target %d times", src, len(dst))
			continue
		}
		sigs := func(files []podioemu.FileInfo) []string {
			var out []string
			for _, f := range files {
				out = append(out, fmt.Sprintf("%s/%d/%s", f.Name, f.Size, f.SHA256))
			}
			sort.Strings(out)
			return out
		}
		if w, g := sigs(s.ItemFiles(src)), sigs(s.ItemFiles(dst[0].id)); !slices.Equal(w, g) {
			t.Errorf("source item %d: target files %v, want %v", src, g, w)
		}
		wi, gi := imageFileIDs(t, srcRaw[src]), imageFileIDs(t, dst[0].raw)
		if len(wi) != 1 || len(gi) != 1 || fileSig(s, wi[0]) != fileSig(s, gi[0]) {
			t.Errorf("source item %d: image %v in the target, want a copy of %v", src, gi, wi)
		}
		var wc, gc []string
		for _, c := range s.ItemComments(src) {
			wc = append(wc, c.Value)
		}
		for _, c := range s.ItemComments(dst[0].id) {
			gc = append(gc, c.Value)
		}
		if !slices.Equal(wc, gc) {
			t.Errorf("source item %d: target comments %q, want %q", src, gc, wc)
		}
		var sf, df map[string]json.RawMessage
		var si, di podio.APIItem
		json.Unmarshal(srcRaw[src], &si)
		json.Unmarshal(dst[0].raw, &di)
		sf, df = podio.Flatten(si.Fields), podio.Flatten(di.Fields)
		if string(sf["due"]) != string(df["due"]) || string(sf["title"]) != string(df["title"]) {
			t.Errorf("source item %d: due %s title %s in the target, want %s %s", src, df["due"], df["title"], sf["due"], sf["title"])
		}
		if _, ok := df["score"]; ok {
			t.Errorf("source item %d: the calculation was written", src)
		}
	}
}

func openFilePairTB(t testing.TB, s *podioemu.Server) (*podio.Source, *podio.Target, *podio.Client) {
	return openFilePair(t, s, nil, "")
}

func openFilePair(t testing.TB, s *podioemu.Server, mod func(*podio.Options), format string) (*podio.Source, *podio.Target, *podio.Client) {
	t.Helper()
	sc := newClient(t, s, appCreds(fileSrcApp, srcToken), mod)
	src := podio.NewSource(podio.SourceOptions{Client: sc, AppID: fileSrcApp, PageSize: 50, Files: true, Comments: true})
	tc := newClient(t, s, appCreds(fileDstApp, dstToken), mod)
	dst, err := podio.OpenTarget(t.Context(), podio.TargetOptions{Client: tc, AppID: fileDstApp, PageSize: 50,
		Write: podio.WriteOptions{Silent: true}, SourceClient: sc, Files: true, Comments: true, FilesConcurrency: 3,
		ExternalIDFormat: format, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return src, dst, tc
}

// Files, images and comments go across byte-identical and once each,
// through lost answers and 5xx after the write; updating the items again
// uploads nothing and comments nothing.
func TestFilesAndCommentsCopiedOnce(t *testing.T) {
	s := podioemu.New(podioemu.Config{Seed: 5})
	var items []fileItem
	for i := range 16 {
		items = append(items, fileItem{sizes: []int64{int64(1000 + i*7919), int64(i * 40_000)}[:1+i%2], image: int64(2000 + i), comments: i % 4})
	}
	srcIDs := seedFiles(t, s, items)
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetFaults(podioemu.Faults{LostResponseRate: 0.2, ServerErrorRate: 0.1, ServerErrorAfterCommit: 0.5})
	src, dst, _ := openFilePair(t, s, func(o *podio.Options) { o.MaxAttempts = 20 }, "")
	created, failed := migrate(t, src, dst, 5, 4)
	if len(failed) > 0 {
		t.Fatalf("%d items failed, e.g. %v", len(failed), failed[0])
	}
	st := s.Stats()
	t.Logf("emulator: %+v", st)
	if st.Lost == 0 || st.ServerErrors == 0 {
		t.Fatalf("faults were not exercised: %+v", st)
	}
	if st.NotSilent != 0 || st.HooksFired != 0 {
		t.Errorf("%d writes not silent, %d fired hooks", st.NotSilent, st.HooksFired)
	}
	checkFilesCopied(t, s, srcIDs)
	if st.MaxUploadsInFlight > 3 {
		t.Errorf("%d uploads were in flight at once, over files_concurrency 3", st.MaxUploadsInFlight)
	}

	// An update of every item: nothing is uploaded or posted again.
	s.SetFaults(podioemu.Faults{})
	before := s.Stats()
	ctx := t.Context()
	recs, _, err := src.Read(ctx, connector.Cursor{}, 100)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := dst.Update(ctx, created[connector.ExternalID(r.Item.ID)], r.Item.Fields); err != nil {
			t.Fatal(err)
		}
	}
	after := s.Stats()
	if after.Uploads != before.Uploads || after.Comments != before.Comments || after.Attached != before.Attached {
		t.Errorf("updating copied items uploaded %d files, attached %d and posted %d comments; want none",
			after.Uploads-before.Uploads, after.Attached-before.Attached, after.Comments-before.Comments)
	}
	checkFilesCopied(t, s, srcIDs)
}

// An item left unfinished (created, comments not all copied, as after a
// kill) is finished by the next scan, each comment once; items the
// original tool made (migrated-<id>) and items of another format are
// recognized as the source items they came from.
func TestScanFinishesAndAdopts(t *testing.T) {
	s := podioemu.New(podioemu.Config{})
	srcIDs := seedFiles(t, s, []fileItem{{image: 10, comments: 3}, {image: 11}, {image: 12}})
	// Item 0 unfinished: made, its comments not copied yet.
	raw := func(v any) json.RawMessage { b, _ := json.Marshal(v); return b }
	if _, err := s.Seed(podioemu.Item{AppID: fileDstApp, ExternalID: fmt.Sprintf("mv-%d.pending", srcIDs[0]),
		Fields: map[string]json.RawMessage{"title": raw("Item 0")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Seed(podioemu.Item{AppID: fileDstApp, ExternalID: fmt.Sprintf("migrated-%d", srcIDs[1]),
		Fields: map[string]json.RawMessage{"title": raw("Item 1")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Seed(podioemu.Item{AppID: fileDstApp, ExternalID: "crm-7",
		Fields: map[string]json.RawMessage{"title": raw("other")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	_, dst, _ := openFilePair(t, s, nil, "mv-{id}")
	var exts []string
	if _, err := dst.Scan(t.Context(), 0, func(it connector.TargetItem) error {
		exts = append(exts, it.ExternalID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{fmt.Sprint(srcIDs[0]), fmt.Sprint(srcIDs[1]), "crm-7"}
	if !slices.Equal(exts, want) {
		t.Fatalf("scan external ids %v, want %v", exts, want)
	}
	dump := s.Items(fileDstApp)
	if !strings.Contains(string(dump[0]), fmt.Sprintf(`"external_id":"mv-%d"`, srcIDs[0])) {
		t.Errorf("the unfinished item keeps its mark: %s", dump[0][:200])
	}
	var first podio.APIItem
	json.Unmarshal(dump[0], &first)
	if got := s.ItemComments(first.ItemID); len(got) != 3 {
		t.Errorf("finished item has %d comments, want 3", len(got))
	}
	// Scanning again finishes nothing twice.
	if _, err := dst.Scan(t.Context(), 0, func(connector.TargetItem) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got := s.ItemComments(first.ItemID); len(got) != 3 {
		t.Errorf("after a second scan the item has %d comments, want 3", len(got))
	}
	for i, src := range srcIDs[:2] {
		id, found, err := dst.LookupExternal(t.Context(), fmt.Sprint(src))
		if err != nil || !found {
			t.Errorf("lookup of source item %d (%d): %v %v", i, src, found, err)
		}
		_ = id
	}
}

// field_mapping keys and values may be Podio field ids, as the original
// tool's mappings are: the source keys such a field by its id, and the
// target resolves an id as a field name.
func TestFieldMappingByPodioFieldID(t *testing.T) {
	s := podioemu.New(podioemu.Config{})
	seedFiles(t, s, []fileItem{{image: 1}})
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	srcDef, _ := s.AppDef(fileSrcApp)
	dstDef, _ := s.AppDef(fileDstApp)
	srcTitle, dstTitle := fmt.Sprint(srcDef.Fields[0].FieldID), fmt.Sprint(dstDef.Fields[0].FieldID)
	sc := newClient(t, s, appCreds(fileSrcApp, srcToken), nil)
	src := podio.NewSource(podio.SourceOptions{Client: sc, AppID: fileSrcApp, FieldIDs: []string{srcTitle}})
	recs, _, err := src.Read(t.Context(), connector.Cursor{}, 10)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if len(recs) != 1 || string(recs[0].Item.Fields[srcTitle]) != `"Item 0"` {
		t.Fatalf("source fields %v, want the title under its field id %s", recs[0].Item.Fields, srcTitle)
	}
	tc := newClient(t, s, appCreds(fileDstApp, dstToken), nil)
	dst, err := podio.OpenTarget(t.Context(), podio.TargetOptions{Client: tc, AppID: fileDstApp,
		FieldMapping: map[string]string{srcTitle: dstTitle}, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatalf("a mapping to a field id: %v", err)
	}
	// The batcher renames the field by the mapping before the write.
	id, err := dst.Create(t.Context(), "1", connector.Fields{dstTitle: recs[0].Item.Fields[srcTitle]})
	if err != nil {
		t.Fatal(err)
	}
	got, err := dst.Get(t.Context(), id)
	if err != nil || string(got["title"]) != `"Item 0"` {
		t.Fatalf("target title %s (%v), want \"Item 0\"", got["title"], err)
	}
	// A match field named by id: Scan keys it by that id, for the
	// batcher's match cache.
	mt, err := podio.OpenTarget(t.Context(), podio.TargetOptions{Client: tc, AppID: fileDstApp, MatchField: dstTitle, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mt.Scan(t.Context(), 0, func(it connector.TargetItem) error {
		if string(it.Fields[dstTitle]) != `"Item 0"` {
			t.Errorf("scan fields %v, want the match field under its id %s", it.Fields, dstTitle)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := podio.OpenTarget(t.Context(), podio.TargetOptions{Client: tc, AppID: fileDstApp,
		FieldMapping: map[string]string{srcTitle: "999999"}, Logger: zerolog.Nop()}); err == nil || !strings.Contains(err.Error(), "999999") {
		t.Fatalf("a mapping to a field id that does not exist: %v, want an error naming it", err)
	}
}

// A file held outside Podio (a Google Drive link) has no content to
// copy: it is skipped with a warning, and the item and its other files
// are copied.
func TestLinkedFilesAreSkipped(t *testing.T) {
	s := podioemu.New(podioemu.Config{})
	srcIDs := seedFiles(t, s, []fileItem{{sizes: []int64{5000}, image: 10}})
	link, err := s.AddFile(podioemu.SeedFile{Name: "plan.gdoc", Size: 0, HostedBy: "google"})
	if err != nil {
		t.Fatal(err)
	}
	// Attach the link to the seeded item through the API.
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	src, dst, _ := openFilePair(t, s, nil, "")
	sc := newClient(t, s, appCreds(fileSrcApp, srcToken), nil)
	if err := sc.AttachFile(t.Context(), link, srcIDs[0]); err != nil {
		t.Fatal(err)
	}
	created, failed := migrate(t, src, dst, 10, 1)
	if len(failed) > 0 {
		t.Fatalf("failed: %v", failed[0])
	}
	files := s.ItemFiles(created[fmt.Sprint(srcIDs[0])])
	if len(files) != 1 || files[0].Name != "doc-0-0.bin" {
		t.Fatalf("target files %+v, want only doc-0-0.bin", files)
	}
}

// An item whose comments cannot be copied (here the source credentials
// cannot read them) fails, but stays unfinished: Sync's Mark stays
// below it, so the next run's Scan since that Mark finishes it.
func TestUnfinishedItemKeepsTheMarkBelowIt(t *testing.T) {
	s := podioemu.New(podioemu.Config{})
	srcIDs := seedFiles(t, s, []fileItem{{image: 1}, {image: 2, comments: 2}})
	if _, err := s.Start(""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	src, good, _ := openFilePair(t, s, nil, "")
	// A target whose source client cannot reach the source app.
	wrong := newClient(t, s, appCreds(fileDstApp, dstToken), nil)
	tc := newClient(t, s, appCreds(fileDstApp, dstToken), nil)
	bad, err := podio.OpenTarget(t.Context(), podio.TargetOptions{Client: tc, AppID: fileDstApp,
		Write: podio.WriteOptions{Silent: true}, SourceClient: wrong, Comments: true, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	recs, _, err := src.Read(ctx, connector.Cursor{}, 10)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	first, err := bad.Create(ctx, connector.ExternalID(recs[0].Item.ID), recs[0].Item.Fields)
	if err != nil {
		t.Fatalf("an item without comments: %v", err)
	}
	if _, err := bad.Create(ctx, connector.ExternalID(recs[1].Item.ID), recs[1].Item.Fields); err == nil {
		t.Fatal("copying comments with credentials that cannot read them succeeded")
	}
	mark, err := bad.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int64(mark) != first {
		t.Fatalf("mark %d, want %d: the last finished item, below the unfinished one", mark, first)
	}
	// The next run scans since that mark and finishes the item.
	var seen []string
	if _, err := good.Scan(ctx, mark, func(it connector.TargetItem) error {
		seen = append(seen, it.ExternalID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []string{fmt.Sprint(srcIDs[1])}) {
		t.Fatalf("scan since the mark saw %v, want the unfinished item %d", seen, srcIDs[1])
	}
	id, found, err := good.LookupExternal(ctx, fmt.Sprint(srcIDs[1]))
	if err != nil || !found {
		t.Fatalf("lookup of the finished item: %v %v", found, err)
	}
	if got := s.ItemComments(id); len(got) != 2 {
		t.Errorf("the finished item has %d comments, want 2", len(got))
	}
	dump := string(s.Items(fileDstApp)[1])
	if !strings.Contains(dump, fmt.Sprintf(`"external_id":"%d"`, srcIDs[1])) {
		t.Errorf("the finished item keeps its pending mark: %.200s", dump)
	}
}
