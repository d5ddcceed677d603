"""``checkpoint admin keys …`` and ``checkpoint admin bundle …`` (bundles.md §6).

| command | does |
|---|---|
| ``keys new``    | unsigned keys document N + 1 from N (or the first one, with ``--fleet``) |
| ``keys sign``   | one more signature by a root key (refuses any other role)                |
| ``keys verify`` | D, S and, with ``--previous``, the rotation rules K2–K4; JSON, exit 0/1   |
| ``bundle build``| parts from plain source files and an unsigned manifest (offline flow)     |
| ``bundle sign`` | publisher signatures on ``DIR/manifest.json`` (refuses any other role)   |
| ``bundle verify``| D, S, M4–M11 as a gate would; JSON, exit 0/1                            |

Admin tools run on a machine whose clock is NTP-synced: their "now" is the
system clock (``--at`` overrides it for ``bundle verify``). Every file is
written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from sync.bundle import (
    ANY_SITE,
    BundleRejected,
    KeysDoc,
    Manifest,
    add_signatures,
    build_parts_from_dir,
    check_anchor,
    check_keys_update,
    keys_body,
    manifest_body,
    parse_keys,
    parse_manifest,
    part_refs,
    unsigned_document,
    verify_bundle_dir,
)
from sync.bundle.verify import root_signatures
from sync.errors import FormatError
from sync.events import valid_device_id
from sync.keys import KeyFile, atomic_write, load_key_file
from sync.timefmt import format_ms, parse_ms, utc_now_ms

__all__ = ["bundle", "keys"]

_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_LARGE_ROSTER_BYTES = 256 * 1024


def parse_duration_s(text: str) -> int:
    """``365d``, ``12h``, ``30m``, ``3600s`` → seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration such as 365d, 12h, 30m or 3600s")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


class Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        return parse_duration_s(str(value))


class TimeArg(click.ParamType):  # type: ignore[type-arg]
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_ms(str(value))
        except ValueError as exc:
            self.fail(f"{value!r}: {exc} (use YYYY-MM-DDTHH:MM:SS.mmmZ)", param, ctx)


def _read(path: Path, what: str, cap: int = 65_536 + 1) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(cap)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


def _load_keys_doc(path: Path) -> KeysDoc:
    try:
        return parse_keys(_read(path, "keys document"))
    except BundleRejected as exc:
        raise FormatError(f"{path}: not a keys document: {exc}") from exc


def _load_manifest(path: Path) -> Manifest:
    try:
        return parse_manifest(_read(path, "manifest"))
    except BundleRejected as exc:
        raise FormatError(f"{path}: not a manifest: {exc}") from exc


def _pub_keys(paths: tuple[Path, ...], role: str) -> list[KeyFile]:
    return [load_key_file(p, role=role, private=False) for p in paths]


def _echo_json(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, sort_keys=True))


# -- keys ----------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Keys documents: new, sign, verify (root rotation, bundles.md §2.2)."""


@keys.command("new")
@click.option("--from", "from_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The keys document in force (version N); the new one is N + 1. Omit for the first document.")
@click.option("--fleet", help="Fleet id, for the first keys document only.")
@click.option("--root", "root", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Root public key file (repeat). Default: the root keys of --from.")
@click.option("--root-threshold", type=click.IntRange(1), help="Root signatures needed (default: keep, else majority).")
@click.option("--publisher", "publisher", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Publisher public key file (repeat). Default: the publisher keys of --from.")
@click.option("--publisher-threshold", type=click.IntRange(1), help="Publisher signatures needed (default: keep, else 1).")
@click.option("--server", "server", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Server public key file. Default: the server key of --from.")
@click.option("--expires-in", type=Duration(), default="365d", show_default=True, help="Validity from now.")
@click.option("--clock-floor-reset", type=TimeArg(), default=None,
              help="Lower every gate's clock floor to this time (bundles.md §5.6; never carried over).")
@click.option("--max-manifest-validity", type=Duration(), default=None,
              help="Cap on a manifest's expires - server_time (default: keep, else 14d; at least 1h).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The unsigned keys document to write.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def keys_new(from_path: Path | None, fleet: str | None, root: tuple[Path, ...], root_threshold: int | None,
             publisher: tuple[Path, ...], publisher_threshold: int | None, server: tuple[Path, ...],
             expires_in: int, clock_floor_reset: int | None, max_manifest_validity: int | None, out: Path,
             force: bool) -> None:
    """Write keys document N + 1 (unsigned) from keys-N.json and public key files."""
    if out.exists() and not force:
        raise click.UsageError(f"{out} exists; use --force to overwrite (it may hold signatures)")
    previous = _load_keys_doc(from_path) if from_path else None
    if previous is not None and fleet is not None and fleet != previous.fleet:
        raise click.UsageError(f"--fleet {fleet} differs from the fleet of {from_path} ({previous.fleet})")
    if previous is None:
        if not fleet or not valid_device_id(fleet):
            raise click.UsageError("the first keys document needs --fleet (^[a-z0-9][a-z0-9-]{2,62}$)")
        if not (root and publisher and server):
            raise click.UsageError("the first keys document needs --root, --publisher and --server key files")
    now = utc_now_ms()
    body = keys_body(
        previous=previous,
        fleet=fleet,
        root=_pub_keys(root, "root") or None,
        root_threshold=root_threshold,
        publisher=_pub_keys(publisher, "publisher") or None,
        publisher_threshold=publisher_threshold,
        server=_pub_keys(server, "server") or None,
        issued_at_ms=now,
        expires_ms=now + expires_in * 1000,
        clock_floor_reset_ms=clock_floor_reset,
        max_manifest_validity_s=max_manifest_validity,
    )
    data = unsigned_document("keys", body)
    atomic_write(out, data, mode=0o644)
    doc = parse_keys(data)
    click.echo(f"keys version {doc.version} for fleet {doc.fleet} written to {out} (unsigned)")
    for role in ("root", "publisher", "server"):
        r = doc.roles[role]
        click.echo(f"  {role}: {', '.join(f'{k} ({doc.labels[k]})' for k in r.keyids)}; threshold {r.threshold}")
    if previous is not None:
        click.echo(f"needs {previous.roles['root'].threshold} signature(s) by the root keys of version "
                   f"{previous.version} and {doc.roles['root'].threshold} by its own root keys "
                   "('checkpoint admin keys sign --key ROOT-KEY FILE' by each holder)")
    else:
        click.echo(f"needs {doc.roles['root'].threshold} root signature(s) "
                   "('checkpoint admin keys sign --key ROOT-KEY FILE' by each holder)")


@keys.command("sign")
@click.option("--key", "key_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="One root private key file.")
@click.argument("doc_path", metavar="DOC", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def keys_sign(key_path: Path, doc_path: Path) -> None:
    """Add this root key's signature to a keys document (offline, one holder at a time)."""
    key = load_key_file(key_path, role="root")
    data, signed = add_signatures(_read(doc_path, "keys document"), "keys", [key])
    atomic_write(doc_path, data, mode=0o644)
    doc = parse_keys(data)
    own = key.keyid in doc.roles["root"].keyids
    click.echo(f"signed keys version {doc.version} with {signed[0]} ({key.label})"
               f"{'' if own else ' - not a root key of this document: it counts as a root key of the previous one'}")
    click.echo(f"{len(doc.doc.signatures)} signature(s): {', '.join(s.keyid for s in doc.doc.signatures)}")


@keys.command("verify")
@click.option("--previous", "previous_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="keys-N.json: check DOC as version N + 1 (both root thresholds, version order).")
@click.argument("doc_path", metavar="DOC", type=click.Path(dir_okay=False, exists=True, path_type=Path))
def keys_verify(previous_path: Path | None, doc_path: Path) -> None:
    """Check a keys document as a gate would; prints JSON {ok, reason, detail, version, keyids}."""
    data = _read(doc_path, "keys document")
    now = utc_now_ms()
    out: dict[str, Any] = {"ok": False, "reason": None, "detail": "", "version": None, "keyids": []}
    try:
        if previous_path is not None:
            previous = _load_keys_doc(previous_path)
            new = check_keys_update(previous, data, fleet=previous.fleet, now_ms=now, synced=True)
            doc = new or previous
            signers = {s.keyid for s in doc.doc.signatures}
            counted = [k for k in sorted(signers) if k in previous.roles["root"].keyids
                       or k in doc.roles["root"].keyids]
            _, failed = root_signatures(doc.doc, previous)
            _, failed_new = root_signatures(doc.doc, doc)
            out["keyids"] = [k for k in counted if k not in failed and k not in failed_new]
            what = (f"version {doc.version}: the same document as --previous" if new is None
                    else f"version {doc.version} follows {previous.version}: both root thresholds met")
        else:
            doc = check_anchor(data)
            _, failed = root_signatures(doc.doc, doc)
            out["keyids"] = [s.keyid for s in doc.doc.signatures
                             if s.keyid in doc.roles["root"].keyids and s.keyid not in failed]
            what = f"version {doc.version}: root threshold met"
        out["version"] = doc.version
        if now >= doc.expires_ms:
            raise BundleRejected("keys_expired", f"expired {format_ms(doc.expires_ms)}", doc="keys")
        days = (doc.expires_ms - now) // 86_400_000
        note = f"; expires {format_ms(doc.expires_ms)}" + (" - re-sign now (under 30 days left)" if days < 30 else "")
        out.update(ok=True, detail=what + note)
    except BundleRejected as exc:
        out.update(ok=False, reason=exc.reason, detail=f"keys: {exc.detail}",
                   version=out["version"] if out["version"] is not None else exc.version)
    _echo_json(out)
    if not out["ok"]:
        raise click.exceptions.Exit(1)


# -- bundle --------------------------------------------------------------------------------------


@click.group()
def bundle() -> None:
    """Signed rule bundles: build, sign, verify (bundles.md §2.4 offline flow, §6)."""


class _RosterProgress:
    """A rich progress bar on stderr for a large roster.csv (cleared when done)."""

    def __init__(self, src: Path) -> None:
        csv_path = src / "roster.csv"
        self.enabled = csv_path.is_file() and csv_path.stat().st_size >= _LARGE_ROSTER_BYTES
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _RosterProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("roster.csv"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("roster", total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


@bundle.command("build")
@click.option("--fleet", required=True, help="Fleet id (the keys document's).")
@click.option("--site", default=None, help="Target site; omit for every gate of the fleet.")
@click.option("--keys-version", type=click.IntRange(1), required=True, help="Keys document whose publishers sign it.")
@click.option("--version", "version", type=click.IntRange(1), required=True,
              help="Manifest version: above the scope's current version.")
@click.option("--previous", "previous_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The manifest this one replaces (its signed manifest.json).")
@click.option("--expires-in", type=Duration(), default="7d", show_default=True,
              help="Validity from now (at most the keys document's max_manifest_validity_s).")
@click.option("--note", default="", help="Change note shown to admins (at most 1000 characters).")
@click.argument("src", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def bundle_build(fleet: str, site: str | None, keys_version: int, version: int, previous_path: Path | None,
                 expires_in: int, note: str, src: Path, out: Path) -> None:
    """Build parts from SRC and an unsigned manifest in OUT (manifest.json, parts/<sha256>)."""
    for name, value in (("--fleet", fleet), ("--site", site)):
        if value is not None and not valid_device_id(value):
            raise click.BadParameter(f"{value!r} must match ^[a-z0-9][a-z0-9-]{{2,62}}$", param_hint=name)
    if len(note) > 1000:
        raise click.BadParameter("at most 1000 characters", param_hint="--note")
    previous = _load_manifest(previous_path) if previous_path else None
    if previous is not None:
        if (previous.fleet, previous.site) != (fleet, site):
            raise click.UsageError(f"--previous is for {previous.fleet}/{previous.site}, not {fleet}/{site}")
        if version <= previous.version:
            raise click.UsageError(f"--version {version} must be above the previous version {previous.version}")
    with _RosterProgress(src) as progress:
        parts = build_parts_from_dir(src, progress=progress)
    now = utc_now_ms()
    body = manifest_body(fleet=fleet, site=site, version=version, keys_version=keys_version, parts=parts,
                         issued_at_ms=now, server_time_ms=now, expires_ms=now + expires_in * 1000,
                         previous=previous, note=note)
    data = unsigned_document("manifest", body)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    refs = part_refs(parts)
    for name, raw in parts.items():
        atomic_write(out / "parts" / refs[name].sha256, raw, mode=0o644)
    atomic_write(out / "manifest.json", data, mode=0o644)
    click.echo(f"manifest version {version} for {fleet}/{site or '*'} under keys version {keys_version}, "
               f"expires {format_ms(now + expires_in * 1000)} (unsigned): {out / 'manifest.json'}")
    for name in sorted(parts):
        click.echo(f"  {name:16} {refs[name].length:>10} bytes  {refs[name].sha256}")
    click.echo("next: 'checkpoint admin bundle sign --keys PUBLISHER-KEY OUT' by each publisher holder")


@bundle.command("sign")
@click.option("--keys", "key_paths", multiple=True, required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Publisher private key file (repeat).")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, exists=True, path_type=Path))
def bundle_sign(key_paths: tuple[Path, ...], directory: Path) -> None:
    """Sign DIR/manifest.json with publisher keys (refuses a key of any other role)."""
    signers = [load_key_file(p, role="publisher") for p in key_paths]
    path = directory / "manifest.json"
    data, signed = add_signatures(_read(path, "manifest"), "manifest", signers)
    atomic_write(path, data, mode=0o644)
    m = parse_manifest(data)
    click.echo(f"signed manifest version {m.version} with {', '.join(signed)}; "
               f"{len(m.doc.signatures)} signature(s); id {m.id}")


@bundle.command("verify")
@click.option("--trusted", "trusted_path", required=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path), help="The keys document the gates hold.")
@click.option("--previous", "previous_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The manifest in force at the gates (rollback, fork checks).")
@click.option("--site", default=None, help="The gates' site (default: whatever site the manifest names).")
@click.option("--at", "at_ms", type=TimeArg(), default=None, help="Check as of this time (default: now).")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, exists=True, path_type=Path))
def bundle_verify(trusted_path: Path, previous_path: Path | None, site: str | None, at_ms: int | None,
                  directory: Path) -> None:
    """Run D, S, M4–M11 as a gate would; prints JSON {ok, reason, detail, version, id, parts}."""
    now = at_ms if at_ms is not None else utc_now_ms()
    try:
        trusted = check_anchor(_read(trusted_path, "keys document"))
    except BundleRejected as exc:
        _echo_json({"ok": False, "reason": exc.reason, "detail": f"keys: {exc.detail}", "version": None, "id": None,
                    "parts": {}})
        raise click.exceptions.Exit(1) from exc
    previous = _load_manifest(previous_path) if previous_path else None
    report = verify_bundle_dir(directory, keys=trusted, now_ms=now, site=site if site is not None else ANY_SITE,
                               previous=previous)
    _echo_json(report.to_json())
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    if not report.ok:
        raise click.exceptions.Exit(1)
