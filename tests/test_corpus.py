import functools
import hashlib
import http.server
import threading

import pytest

from gptcore.data.corpus import CorpusError, fetch_url, prepare_corpus, resolve_sources
from gptcore.model.tokenizer import EOT_TOKEN
from gptcore.settings.data import VERDICT_SHA256, VERDICT_URL


def test_default_corpus_comes_from_the_mirror(shared_dir):
    (path,) = resolve_sources(VERDICT_URL, VERDICT_SHA256)
    assert path.resolve() == (shared_dir / "data" / "the-verdict.txt").resolve()


def test_mirror_finds_a_download_by_its_checksum(shared_dir):
    """tinyshakespeare's canonical URL ends in input.txt; the mirror lists it as tinyshakespeare.txt."""
    url = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    sha256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    (path,) = resolve_sources(url, sha256)
    assert path.resolve() == (shared_dir / "data" / "tinyshakespeare.txt").resolve()


def test_mirror_copy_with_wrong_checksum_names_both(shared_dir):
    with pytest.raises(CorpusError) as error:
        resolve_sources(VERDICT_URL, "0" * 64)
    assert "0" * 64 in str(error.value) and VERDICT_SHA256 in str(error.value)


def test_url_without_checksum_is_refused():
    with pytest.raises(CorpusError, match="sha256"):
        resolve_sources("https://example.org/corpus.txt")


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_download_is_verified_and_cached(http_server, tmp_path, monkeypatch):
    monkeypatch.delenv("GPTCORE_MIRROR", raising=False)
    served, base = http_server
    (served / "book.txt").write_text("It was a dark and stormy night.")
    digest = hashlib.sha256(b"It was a dark and stormy night.").hexdigest()
    cache = tmp_path / "cache"
    first = fetch_url(f"{base}/book.txt", digest, "data.sha256", cache)
    (served / "book.txt").unlink()  # the second call must not need the server
    assert fetch_url(f"{base}/book.txt", digest, "data.sha256", cache) == first
    assert first.read_text() == "It was a dark and stormy night."
    (served / "other.txt").write_text("tampered")
    with pytest.raises(CorpusError, match=f"expected sha256 {digest}"):
        fetch_url(f"{base}/other.txt", digest, "data.sha256", cache)
    assert not list(cache.rglob("other.txt*"))  # a failed download leaves nothing behind


def test_folder_and_glob_sources_join_documents_with_endoftext(tmp_path):
    for name, text in [("b.txt", "second"), ("a.txt", "first"), ("c.md", "ignored")]:
        (tmp_path / name).write_text(text)
    files = resolve_sources(str(tmp_path))
    assert [f.name for f in files] == ["a.txt", "b.txt"]
    assert resolve_sources(str(tmp_path / "*.txt")) == files
    prepare_corpus(files, tmp_path / "out", train_ratio=0.5)
    joined = (tmp_path / "out" / "train.txt").read_text() + (tmp_path / "out" / "val.txt").read_text()
    assert joined == f"first{EOT_TOKEN}second"


def test_split_by_character_ratio(shared_dir, tmp_path):
    (path,) = resolve_sources(VERDICT_URL, VERDICT_SHA256)
    summary = prepare_corpus([path], tmp_path, train_ratio=0.9)
    text = path.read_text(encoding="utf-8")
    split = int(0.9 * len(text))  # the seed's split_idx
    assert (tmp_path / "train.txt").read_text() == text[:split]
    assert (tmp_path / "val.txt").read_text() == text[split:]
    assert summary["splits"]["train"]["chars"] == split
    assert summary["sources"][0]["sha256"] == VERDICT_SHA256


def test_crlf_and_bom_are_normalised(tmp_path):
    (tmp_path / "dos.txt").write_bytes(b"\xef\xbb\xbfline one\r\nline two\rline three\n")
    prepare_corpus([tmp_path / "dos.txt"], tmp_path / "out", train_ratio=0.5)
    out = (tmp_path / "out" / "train.txt").read_text() + (tmp_path / "out" / "val.txt").read_text()
    assert out == "line one\nline two\nline three\n"


@pytest.mark.parametrize("content,message", [
    (b"", "empty or whitespace"), (b"  \n\t\n", "empty or whitespace"),
    (b"caf\xe9 au lait", "not valid UTF-8"), (b"\x7fELF\x00\x01\x02", "binary"),
])
def test_unusable_files_are_rejected_with_their_path(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message) as error:
        prepare_corpus([path], tmp_path / "out")
    assert str(path) in str(error.value)


def test_missing_source_is_named(tmp_path):
    with pytest.raises(CorpusError, match="nowhere.txt"):
        resolve_sources(str(tmp_path / "nowhere.txt"))
