"""Bundle files into the verifier (bundles.md §1, §3, §3.7): keys documents, manifests, current statements,
parts and tars, mutated raw (every changed file rejected) and re-signed (no crash, only §3.7 reasons).

The short run here is 2 500 inputs; ``bench/soak/bundle_fuzz.py`` runs 1 000 000 with the same
target (``tests/reliability/bundle_fuzz.py``). ``CHECKPOINT_TEST_SEED`` replays a run.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync.bundle import BundleRejected, read_bundle_tar
from tests.crash import figures
from tests.crash.harness import seed_from_env
from tests.reliability.bundle_fuzz import RAW_TARGETS, RESIGNED_TARGETS, Corpus, build_corpus, run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("bundle-fuzz"))


def test_every_changed_bundle_file_is_rejected_and_nothing_crashes(corpus: Corpus) -> None:
    seed = seed_from_env()
    st = run(corpus, 2500, seed=seed)
    fig = {"test": "fuzz_bundles", "seed": seed, **st.figures()}
    figures.report(fig)
    assert not st.failures, f"CHECKPOINT_TEST_SEED={seed}:\n" + "\n".join(st.failures[:3])
    assert set(st.by_target) == set(RAW_TARGETS + RESIGNED_TARGETS)
    assert st.bad > 1000 and st.bad_rejected == st.bad          # 100 % of bad bundles rejected
    # the re-signed mutations reach past the signature into the semantic checks
    deep = {v for v in st.verdicts if v.split(":")[-1] in (
        "malformed", "keys_version_mismatch", "scope_mismatch", "part_invalid", "part_missing", "validity_too_long",
        "keyid_mismatch", "rotation_new_threshold", "nonce_mismatch", "wrong_type", "unsupported_spec")}
    assert len(deep) >= 5, st.verdicts


def _stream_breaks_with_zlib_error(data: bytes) -> bool:
    """Read the archive the way ``read_bundle_tar`` does (gzip stream under ``tarfile`` ``r|``)."""
    try:
        with tarfile.open(fileobj=gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"), mode="r|") as tar:
            for member in tar:
                f = tar.extractfile(member)
                if f is not None:
                    f.read()
    except zlib.error:
        return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def _tgz_damaged_inside_deflate(corpus: Corpus) -> bytes:
    raw = bytearray(corpus.tgz)
    for i in range(len(raw) - 9, 20, -7):              # damage inside a member's data, late in the stream
        raw[i] ^= 0xFF
        if _stream_breaks_with_zlib_error(bytes(raw)):
            return bytes(raw)
        raw[i] ^= 0xFF
    raise AssertionError("could not damage the deflate stream")


def test_a_tgz_damaged_inside_its_deflate_stream_is_malformed_not_a_crash(corpus: Corpus) -> None:
    """Found by the fuzz: ``zlib.error`` escaped ``read_bundle_tar`` (and ``POST /v1/admin/bundles`` answered 500)."""
    bad = _tgz_damaged_inside_deflate(corpus)
    with pytest.raises(BundleRejected) as exc:
        read_bundle_tar(bad)
    assert exc.value.reason == "malformed"
    with pytest.raises(BundleRejected):
        read_bundle_tar(io.BytesIO(bad))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[object]:
    from tests.server.harness import ServerHarness

    h = ServerHarness(f"sqlite:///{tmp_path / 'server.db'}", tmp_path)
    yield h
    h.close()


def test_the_server_refuses_the_damaged_tgz_with_422(server: object, corpus: Corpus) -> None:
    r = server.admin("POST", "/v1/admin/bundles", content=_tgz_damaged_inside_deflate(corpus),  # type: ignore[attr-defined]
                     headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 422 and r.json()["error"] == "malformed", r.text
